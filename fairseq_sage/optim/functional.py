"""The SAGE modulation as element-wise functions (Liang et al., ICLR 2022, Eq. 2-4).

For one parameter tensor θ with gradient g at update t (θ taken before the update):

    I      = |θ ⊙ g|                              sensitivity (Eq. 2)
    Ī_t    = β0 · Ī_{t-1} + (1 − β0) · I            its exponential moving average (Eq. 3)
    Ī_c    = Ī_t / (1 − β0^t)                      bias-corrected
    U      = |I − Ī_c|                             local temporal variation (Eq. 4)
    m      = (U + ε) / (Ī_c + ε)                   the element's learning-rate multiplier

A SAGE optimizer multiplies its base step (Adam's m̂/(√v̂ + eps), Adamax's, SGD's, Lion's) by ``m``
element-wise; the scheduled learning rate η(t) is applied on top, as usual.

This is the one Python definition of the formula: :func:`sage_terms_foreach_` (I, Ī, Ī_c, U) and
:func:`multiplier_from_terms_foreach_` (m) work on lists of tensors with ``torch._foreach_*``
operations (the foreach and compiled implementations, :mod:`fairseq_sage.optim.multi_tensor`);
:func:`sage_multiplier_` (the reference path, one tensor at a time) and the diagnostics
(:mod:`fairseq_sage.optim.diagnostics`) call them on one-element lists, and :func:`bias_correction`
gives 1 − β0^t to all. The fused C++ kernel has its own single copy (``csrc/fused_cpu.cpp``).

ε sits in the numerator and the denominator, as in the paper. The authors' released code drops it
from the numerator, which gives a weight that is exactly 0 (fairseq zero-initialises biases) a
multiplier of 0 forever; here such a weight gets ``m = ε/ε = 1`` and moves with the base step.
"""

from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "bias_correction",
    "sage_terms_foreach_",
    "multiplier_from_terms_foreach_",
    "sage_multiplier_foreach_",
    "sage_multiplier_",
]


def bias_correction(beta0: float, step: int) -> float:
    """1 − β0^t, the divisor that turns Ī into Ī_c at update t = ``step`` (counted from 1)."""
    return 1 - beta0**step


def sage_terms_foreach_(
    sensitivity_emas: Sequence[Tensor],
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    beta0: float,
    corrections: Sequence[Union[float, Tensor]],
) -> Tuple[List[Tensor], List[Tensor]]:
    """Advance every Ī (``sensitivity_emas``) in place by one update; return new lists of U and Ī_c.

    ``corrections`` holds 1 − β0^t for each tensor (its own t), as Python numbers or, under
    ``torch.compile``, as 0-dim tensors (which, unlike numbers, do not force a recompilation when
    they change). ``params`` and ``grads`` are not modified.
    """
    sensitivities = torch._foreach_mul(params, grads)
    torch._foreach_abs_(sensitivities)
    torch._foreach_mul_(sensitivity_emas, beta0)
    torch._foreach_add_(sensitivity_emas, sensitivities, alpha=1 - beta0)
    corrected = torch._foreach_div(sensitivity_emas, corrections)
    torch._foreach_sub_(sensitivities, corrected)
    torch._foreach_abs_(sensitivities)
    return sensitivities, corrected


def multiplier_from_terms_foreach_(variations: List[Tensor], corrected: List[Tensor], eps: float) -> List[Tensor]:
    """m = (U + ε)/(Ī_c + ε), computed in place: returned in ``variations``; ``corrected`` is changed."""
    torch._foreach_add_(variations, eps)
    torch._foreach_add_(corrected, eps)
    torch._foreach_div_(variations, corrected)
    return variations


def sage_multiplier_foreach_(
    sensitivity_emas: Sequence[Tensor],
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    beta0: float,
    corrections: Sequence[Union[float, Tensor]],
    eps: float,
) -> List[Tensor]:
    """Advance every Ī in place (see :func:`sage_terms_foreach_`) and return the multipliers m."""
    variations, corrected = sage_terms_foreach_(sensitivity_emas, params, grads, beta0, corrections)
    return multiplier_from_terms_foreach_(variations, corrected, eps)


def sage_multiplier_(
    sensitivity_ema: Tensor, param: Tensor, grad: Tensor, beta0: float, step: int, eps: float
) -> Tensor:
    """Advance Ī (``sensitivity_ema``, in place) by one update and return the multiplier m.

    ``step`` is t, counted from 1 for the first update of this tensor. The result is a new tensor
    with the shape of ``param``; ``param`` and ``grad`` are not modified.
    """
    correction = bias_correction(beta0, step)
    return sage_multiplier_foreach_([sensitivity_ema], [param], [grad], beta0, [correction], eps)[0]
