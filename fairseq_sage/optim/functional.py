"""The SAGE modulation as element-wise functions (Liang et al., ICLR 2022, Eq. 2-4).

For one parameter tensor θ with gradient g at update t (θ taken before the update):

    I      = |θ ⊙ g|                              sensitivity (Eq. 2)
    Ī_t    = β0 · Ī_{t-1} + (1 − β0) · I            its exponential moving average (Eq. 3)
    Ī_c    = Ī_t / (1 − β0^t)                      bias-corrected
    U      = |I − Ī_c|                             local temporal variation (Eq. 4)
    m      = (U + ε) / (Ī_c + ε)                   the element's learning-rate multiplier

A SAGE optimizer multiplies its base step (Adam's m̂/(√v̂ + eps), Adamax's, SGD's) by ``m``
element-wise; the scheduled learning rate η(t) is applied on top, as usual.

:func:`sage_multiplier_` is the reference, one tensor at a time; :func:`sage_multiplier_foreach_`
computes the same with ``torch._foreach_*`` operations over lists of tensors (the multi-tensor and
compiled implementations, :mod:`fairseq_sage.optim.multi_tensor`).

ε sits in the numerator and the denominator, as in the paper. The authors' released code drops it
from the numerator, which gives a weight that is exactly 0 (fairseq zero-initialises biases) a
multiplier of 0 forever; here such a weight gets ``m = ε/ε = 1`` and moves with the base step.
"""

from typing import List, Sequence, Union

import torch
from torch import Tensor

__all__ = ["sage_multiplier_", "sage_multiplier_foreach_"]


def sage_multiplier_(
    sensitivity_ema: Tensor, param: Tensor, grad: Tensor, beta0: float, step: int, eps: float
) -> Tensor:
    """Advance Ī (``sensitivity_ema``, in place) by one update and return the multiplier m.

    ``step`` is t, counted from 1 for the first update of this tensor. The result is a new tensor
    with the shape of ``param``; ``param`` and ``grad`` are not modified.
    """
    sensitivity = torch.mul(param, grad).abs_()
    sensitivity_ema.mul_(beta0).add_(sensitivity, alpha=1 - beta0)
    ema_corrected = sensitivity_ema / (1 - beta0**step)
    variation = sensitivity.sub_(ema_corrected).abs_()
    return variation.add_(eps).div_(ema_corrected.add_(eps))



def sage_multiplier_foreach_(
    sensitivity_emas: Sequence[Tensor],
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    beta0: float,
    corrections: Sequence[Union[float, Tensor]],
    eps: float,
) -> List[Tensor]:
    """:func:`sage_multiplier_` for lists of tensors: advance every Ī in place, return the multipliers.

    ``corrections`` holds 1 − β0^t for each tensor (its own t), as Python numbers or, under
    ``torch.compile``, as 0-dim tensors (which, unlike numbers, do not force a recompilation when
    they change).
    """
    sensitivities = torch._foreach_mul(params, grads)
    torch._foreach_abs_(sensitivities)
    torch._foreach_mul_(sensitivity_emas, beta0)
    torch._foreach_add_(sensitivity_emas, sensitivities, alpha=1 - beta0)
    corrected = torch._foreach_div(sensitivity_emas, corrections)
    torch._foreach_sub_(sensitivities, corrected)
    torch._foreach_abs_(sensitivities)
    torch._foreach_add_(sensitivities, eps)
    torch._foreach_add_(corrected, eps)
    torch._foreach_div_(sensitivities, corrected)
    return sensitivities
