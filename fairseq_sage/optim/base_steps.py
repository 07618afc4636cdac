"""The base optimizers' steps, written as "update = −size · numerator / denominator".

Each ``*_step`` function advances its optimizer's state by one update for one float32 tensor and
returns a :class:`BaseStep`; :func:`apply_step_` then changes the weights. SAGE (see
:mod:`fairseq_sage.optim.functional`) sits between the two: it multiplies ``numerator`` element-wise by
its learning-rate multiplier. The arithmetic, and its order, is that of fairseq's ``adam`` and
``adamax`` and of ``torch.optim.SGD``, so that a parameter group with SAGE switched off gives the
same bits as those optimizers.

Weight decay is decoupled (as fairseq's ``adam`` and ``adamax`` do it, "AdamW"):
θ ← θ − η·λ·θ before the step, at the scheduled learning rate η and never modulated by SAGE.
"""

import math
from typing import Callable, Dict, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "BaseStep",
    "STEP_SIZES",
    "adam_init",
    "adam_step",
    "adamax_init",
    "adamax_step",
    "sgd_init",
    "sgd_step",
    "apply_step_",
]


class BaseStep(NamedTuple):
    """One tensor's update ``−size · numerator / denominator`` (no denominator: ``−size · numerator``)."""

    numerator: Tensor
    denominator: Optional[Tensor]
    size: float


def adam_init(param: Tensor, group: dict) -> Dict[str, Tensor]:
    """Adam's state: the moving averages m of g and v of g²."""
    return {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}


def adam_step_size(group: dict, step: int) -> float:
    """Adam's step size at update t = ``step``: η·√(1−β2^t)/(1−β1^t)."""
    beta1, beta2 = group["betas"]
    return group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)


def adam_step(state: dict, grad: Tensor, group: dict) -> BaseStep:
    """Adam as fairseq's ``adam`` computes it, at update t = ``state["step"]``:

        m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²,
        update = −η·√(1−β2^t)/(1−β1^t) · m / (√v + eps).
    """
    beta1, beta2 = group["betas"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denominator = exp_avg_sq.sqrt().add_(group["eps"])
    return BaseStep(exp_avg, denominator, adam_step_size(group, state["step"]))


def adamax_init(param: Tensor, group: dict) -> Dict[str, Tensor]:
    """Adamax's state: the moving average m of g and the decayed infinity norm u."""
    return {"exp_avg": torch.zeros_like(param), "exp_inf": torch.zeros_like(param)}


def adamax_step_size(group: dict, step: int) -> float:
    """Adamax's step size at update t = ``step``: η/(1−β1^t), or η with ``bias_correction=False``."""
    if not group["bias_correction"]:
        return group["lr"]
    return group["lr"] / (1 - group["betas"][0] ** step)


def adamax_step(state: dict, grad: Tensor, group: dict) -> BaseStep:
    """Adamax as fairseq's ``adamax`` computes it, at update t = ``state["step"]``:

        m ← β1·m + (1−β1)·g,   u ← max(β2·u, |g|),
        update = −η/(1−β1^t) · m / (u + eps)     (η alone with ``bias_correction=False``).

    Unlike fairseq's, the gradient is left as it was.
    """
    beta1, beta2 = group["betas"]
    exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    torch.maximum(exp_inf.mul_(beta2), grad.abs(), out=exp_inf)
    return BaseStep(exp_avg, exp_inf.add(group["eps"]), adamax_step_size(group, state["step"]))


def sgd_init(param: Tensor, group: dict) -> Dict[str, Tensor]:
    """SGD's state: the momentum buffer b, when momentum is on."""
    return {"momentum_buffer": torch.zeros_like(param)} if group["momentum"] != 0 else {}


def sgd_step_size(group: dict, step: int) -> float:
    """SGD's step size: η at every update."""
    return group["lr"]


def sgd_step(state: dict, grad: Tensor, group: dict) -> BaseStep:
    """SGD with heavy-ball momentum μ, as ``torch.optim.SGD`` (no dampening, no Nesterov):

        b ← μ·b + g  (b = g at the first update),   update = −η · b.
    """
    if group["momentum"] == 0:
        return BaseStep(grad, None, group["lr"])
    buffer = state["momentum_buffer"]
    buffer.mul_(group["momentum"]).add_(grad)
    return BaseStep(buffer, None, group["lr"])


STEP_SIZES: Dict[str, Callable[[dict, int], float]] = {
    "adam": adam_step_size,
    "adamax": adamax_step_size,
    "sgd": sgd_step_size,
}
"""Each base optimizer's "size" as a function of its group and the tensor's update count t."""


def apply_step_(param: Tensor, step: BaseStep, lr: float, weight_decay: float) -> None:
    """θ ← θ − η·λ·θ, then θ ← θ − size · numerator / denominator (in place)."""
    if weight_decay != 0:
        param.add_(param, alpha=-weight_decay * lr)
    if step.denominator is None:
        param.add_(step.numerator, alpha=-step.size)
    else:
        param.addcdiv_(step.numerator, step.denominator, value=-step.size)
