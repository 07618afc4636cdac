"""The fused CPU implementation: one C++ loop over all elements of a parameter group.

``csrc/fused_cpu.cpp`` is compiled at first use with the C++ compiler torch finds (about a
minute, vectorised for AVX-512/AVX2 where the CPU has them, threaded with torch's OpenMP pool)
and cached in torch's extension directory (``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``), so later processes load it in about a second. Where it cannot be
built (no compiler), :func:`load_kernel` raises :class:`KernelUnavailable` and the caller falls
back to :mod:`fairseq_sage.optim.multi_tensor`.

Each element goes through the chain of the reference path (:mod:`fairseq_sage.optim.base_steps`,
:mod:`fairseq_sage.optim.functional`) in float32, in one read and one write of θ, g, the state and Ī;
the results match the reference path to float32 rounding, not bit for bit (the divisions are
gathered into one and Ī is multiplied by 1/(1 − β0^t)).
"""

import functools
import logging
import sys
from pathlib import Path
from typing import List, Sequence

import torch
from torch import Tensor

from . import base_steps

__all__ = ["KernelUnavailable", "load_kernel", "supports", "fused_update_"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "fused_cpu.cpp"

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

BASES = {"adam": 0, "adamax": 1, "sgd_momentum": 2, "sgd": 3}
"""The kernel's numbering of the base optimizers."""

STATE_KEYS = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamax": ("exp_avg", "exp_inf"),
    "sgd_momentum": ("momentum_buffer",),
    "sgd": (),
}


class KernelUnavailable(RuntimeError):
    """The C++ kernel could not be built or loaded here."""


def extension_name() -> str:
    """The kernel's name in torch's extension cache; it changes with torch's version (its ABI)."""
    version = torch.__version__.split("+")[0].replace(".", "_")
    return f"fairseq_sage_fused_cpu_torch{version}"


@functools.lru_cache(maxsize=None)
def load_kernel():
    """The compiled kernel module (built on the first call of the process if not cached)."""
    from torch.utils import cpp_extension

    if not SOURCE.is_file():
        raise KernelUnavailable(f"{SOURCE} is missing from the installed package")
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    logger.info("fairseq-sage: loading the fused CPU kernel of the SAGE update (compiled at its first "
                "use on this machine, which takes about a minute, then cached)")
    try:
        return cpp_extension.load(
            name=extension_name(),
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-fno-math-errno", "-ffp-contract=off", *openmp],
            extra_ldflags=openmp,
            verbose=False,
        )
    except Exception as err:  # no compiler, no ninja, a failed build: all mean "use another path"
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise KernelUnavailable(f"{type(err).__name__}: {lines[-1]}") from err


def supports(param: Tensor, state: dict) -> bool:
    """Whether the kernel can update ``param`` (dtype, device, layout of it, its gradient and state)."""
    grad = param.grad
    return (
        param.device.type == "cpu"
        and param.dtype in WEIGHT_DTYPES
        and grad.dtype == param.dtype
        and param.is_contiguous()
        and grad.is_contiguous()
        and all(
            value.dtype == torch.float32 and value.is_contiguous()
            for value in state.values()
            if torch.is_tensor(value)
        )
    )


def base_name(kind: str, group: dict) -> str:
    """``kind`` ("adam", "adamax", "sgd"), with SGD split by whether it keeps a momentum buffer."""
    if kind == "sgd":
        return "sgd_momentum" if group["momentum"] != 0 else "sgd"
    return kind


def fused_update_(kind: str, group: dict, params: Sequence[Tensor], states: Sequence[dict]) -> None:
    """Update ``params`` (one dtype, all :func:`supported <supports>`) of ``group`` in one kernel call.

    ``states`` are their states with ``step`` already advanced to this update.
    """
    if not params:
        return
    base = base_name(kind, group)
    step_size = base_steps.STEP_SIZES[kind]
    state_lists: List[List[Tensor]] = [[s[key] for s in states] for key in STATE_KEYS[base]]
    state_lists += [[]] * (2 - len(state_lists))
    sage = group["sage"]
    beta1, beta2 = group.get("betas", (group.get("momentum", 0.0), 0.0))
    load_kernel().fused_step(
        BASES[base],
        list(params),
        [p.grad for p in params],
        *state_lists,
        [s["sensitivity_ema"] for s in states] if sage else [],
        [step_size(group, s["step"]) for s in states],
        [1 - group["beta0"] ** s["step"] for s in states],
        group["lr"] * group["weight_decay"],
        [beta1, beta2, group.get("eps", 0.0), group["beta0"], group["sage_eps"]],
    )
