"""Hyper-parameters declared once (name, default, bound, fairseq flag) and checked by their bounds.

Each base optimizer of the registry (:mod:`fairseq_sage.optim.base_steps`) lists its
:class:`HyperParameter` entries, and SAGE adds its own (:data:`SAGE_HYPERPARAMETERS`); the
torch classes take their constructor's keywords and defaults from them, the fairseq adapters
(:mod:`fairseq_sage.fairseq.optimizers`) their flags, and :func:`check_group` their bounds.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping

__all__ = ["HyperParameter", "BOUNDS", "DEFAULT_SAGE_EPS", "SAGE_HYPERPARAMETERS", "by_name", "check_group"]

BOUNDS = ("nonnegative", "positive", "unit", "unit pair", "switch")
"""``nonnegative``: a number >= 0; ``positive``: > 0; ``unit``: in [0, 1); ``unit pair``: a pair
(β1, β2) of numbers in [0, 1); ``switch``: True or False (not checked)."""


@dataclass(frozen=True)
class HyperParameter:
    """One keyword of an optimizer class, and the value its parameter groups hold under ``name``."""

    name: str
    default: Any
    bound: str
    """One of :data:`BOUNDS`."""
    flag: str
    """The fairseq flag that sets it (``--adam-betas``); a switch whose flag starts with ``--no-``
    is True unless the flag is given."""
    help: str
    """What it is, for the flag's ``--help``."""

    def __post_init__(self):
        if self.bound not in BOUNDS:
            raise ValueError(f"hyper-parameter {self.name}: bound must be one of {BOUNDS}, got {self.bound!r}")


DEFAULT_SAGE_EPS = 1e-12
"""Default ε of the SAGE multiplier (U + ε)/(Ī_c + ε).

Per-element |θ·g| of a ``transformer_iwslt_de_en`` had a median of 2.7e-6 at initialisation and
8.3e-8 after 10 updates (``benchmarks/sensitivity_magnitude.py``, see the README), so ε = 1e-12
leaves the multiplier of every weight that carries signal untouched, while a weight or gradient
that is exactly 0 gets m = 1 instead of 0/0.
"""

SAGE_HYPERPARAMETERS = (
    HyperParameter("beta0", 0.8, "unit", "--sage-beta0", "beta0 of the sensitivity moving average"),
    # ε must be positive, or (0 + 0)/(0 + 0) is NaN for every element whose weight or gradient is 0
    HyperParameter("sage_eps", DEFAULT_SAGE_EPS, "positive", "--sage-eps", "epsilon of the SAGE lr multiplier"),
    HyperParameter("sage", True, "switch", "--sage-params", "whether the group's parameters get SAGE"),
)
"""SAGE's keywords, after the base optimizer's in every class."""


def by_name(entries: Iterable[HyperParameter]) -> Dict[str, HyperParameter]:
    """``entries`` by name; ValueError where one name is declared with two different bounds."""
    found: Dict[str, HyperParameter] = {}
    for entry in entries:
        known = found.setdefault(entry.name, entry)
        if known.bound != entry.bound:
            raise ValueError(f"hyper-parameter {entry.name} is declared with bounds {known.bound!r} and {entry.bound!r}")
    return found


def finite_number(value: Any, name: str) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_value(value: Any, bound: str, name: str) -> None:
    """ValueError naming ``name`` unless ``value`` is within ``bound``."""
    if bound == "switch":
        return
    if bound == "unit pair":
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}")
        for member in value:
            if not 0.0 <= finite_number(member, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        return
    number = finite_number(value, name)
    if bound == "unit" and not 0.0 <= number < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    if bound == "nonnegative" and not number >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if bound == "positive" and not number > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_group(group: Mapping[str, Any], known: Mapping[str, HyperParameter], names: Mapping[str, str]) -> None:
    """ValueError unless every value of ``group`` whose key is ``known`` is within its bound.

    ``names`` maps a key (``beta0``) to the name the user knows it by (a fairseq flag); the key
    itself names it otherwise.
    """
    for key, value in group.items():
        if key in known:
            check_value(value, known[key].bound, names.get(key, key))
