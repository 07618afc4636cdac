"""The checks shared by the torch classes (:mod:`.optimizers`) and ``SAGE(optimizer)`` (:mod:`.wrapper`).

- :func:`check_hyperparameters`: every hyper-parameter a group holds is finite and within the
  bound its declaration gives (the registry's entries and SAGE's, :mod:`.hyperparameters`);
- :func:`check_parameters`: a parameter the optimizers can update (not a complex one);
- :func:`working_dtype`: the dtype a parameter is updated in and its SAGE state kept in, and
  :func:`in_working_dtype`: a tensor in it;
- :func:`all_finite`: no NaN or infinity in the gradients of an update (else it is skipped);
- :data:`LOW_PRECISION_DTYPES`: the dtypes updated through a float32 copy with float32 state.
"""

from typing import Dict, Iterable, List

import torch
from torch import Tensor

from . import base_steps, fused_cpu, hyperparameters
from .hyperparameters import SAGE_HYPERPARAMETERS, HyperParameter

__all__ = ["LOW_PRECISION_DTYPES", "KNOWN_HYPERPARAMETERS", "check_hyperparameters", "check_parameters", "all_finite",
           "working_dtype", "in_working_dtype"]

LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
"""Parameter dtypes whose update is computed in float32 (as fairseq's own optimizers do), with
float32 state, and rounded once into the parameter's dtype."""

KNOWN_HYPERPARAMETERS: Dict[str, HyperParameter] = hyperparameters.by_name(
    SAGE_HYPERPARAMETERS + tuple(entry for base in base_steps.BASES.values() for entry in base.hyperparameters)
)
"""Every hyper-parameter of the registry and of SAGE, by name (one bound per name)."""


def check_hyperparameters(group: dict, names: Dict[str, str]) -> None:
    """Raise ValueError unless every hyper-parameter in ``group`` that the registry or SAGE declares
    is a finite number within its bound: lr, eps, weight decay, NAdam's momentum decay >= 0; the
    SAGE ε > 0; β0, each β (a pair) and momentum in [0, 1).

    ``names`` maps a keyword ("beta0", "betas", ...) to the name the user knows it by (a fairseq flag).
    """
    hyperparameters.check_group(group, KNOWN_HYPERPARAMETERS, names)


COMPLEX_FIX = "optimize torch.view_as_real(param) instead"
"""What a user with a complex parameter can do instead (|θ·g| is not a complex weight's sensitivity)."""


def check_parameters(params: Iterable[Tensor], refusal: str, fix: str = COMPLEX_FIX) -> None:
    """Raise ValueError '``refusal`` (got one of dtype D); ``fix``' for a parameter SAGE cannot
    modulate (a complex one)."""
    for param in params:
        if param.is_complex():
            raise ValueError(f"{refusal} (got one of dtype {param.dtype}); {fix}")


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter of ``dtype`` is updated in and its SAGE state kept in: float32 for
    :data:`LOW_PRECISION_DTYPES`, else ``dtype`` itself."""
    return torch.float32 if dtype in LOW_PRECISION_DTYPES else dtype


def in_working_dtype(tensor: Tensor) -> Tensor:
    """``tensor`` in :func:`working_dtype`: a float32 copy of a float16/bfloat16 tensor, else the
    tensor itself (no copy, no call on the update's hot path)."""
    return tensor.float() if tensor.dtype in LOW_PRECISION_DTYPES else tensor


def all_finite(tensors: List[Tensor], kernel: bool = False) -> bool:
    """True when no tensor in ``tensors`` holds a NaN or an infinity (one host synchronisation).

    With ``kernel``, the fused C++ kernel checks the tensors it can read (:func:`fused_cpu.all_finite`:
    one parallel read, no temporaries). For the others, a NaN or an infinity makes a tensor's sum
    NaN or infinite, so the sums (one read of every tensor, no temporaries) decide; only where a
    sum is not finite, which an overflowing sum of finite elements can also be, are the elements
    themselves examined.
    """
    if kernel:
        if not fused_cpu.all_finite([t for t in tensors if fused_cpu.checkable(t)]):
            return False
        tensors = [t for t in tensors if not fused_cpu.checkable(t)]
    if not tensors:
        return True
    device = tensors[0].device
    sums = torch.stack([
        t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32).to(device) for t in tensors
    ])
    if bool(sums.isfinite().all()):
        return True
    return bool(torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all())
