"""The registry of base optimizers, each step written once as "update = −size · numerator / denominator".

Every base optimizer is one :class:`BaseOptimizer` entry of :data:`BASES`, which declares

- its state: the keys of its buffers (:attr:`~BaseOptimizer.state_keys`), each a float32 buffer of
  the parameter's shape that starts at zero (:meth:`~BaseOptimizer.init`);
- its step, in foreach form (:attr:`~BaseOptimizer.step_foreach`): it advances the state of a list
  of tensors and returns their numerators and denominators; the per-tensor reference step
  (:meth:`~BaseOptimizer.step`) is that function on one-element lists;
- its step size "size" at update t (:attr:`~BaseOptimizer.step_size`);
- the name under which the fused C++ kernel (``csrc/fused_cpu.cpp``) implements it
  (:attr:`~BaseOptimizer.kernel`), or None: such a base runs the foreach and compiled paths.

Every implementation (:mod:`fairseq_sage.optim.implementations`) reads the registry; SAGE (see
:mod:`fairseq_sage.optim.functional`) sits between the step and :func:`apply_step_`, multiplying
``numerator`` element-wise by its learning-rate multiplier. The arithmetic, and its order, is that of
fairseq's ``adam`` and ``adamax``, of ``torch.optim.SGD`` and of Lion's paper, so that a parameter
group with SAGE switched off gives the same bits as fairseq's and torch's optimizers on the reference
path.

Weight decay is decoupled (as fairseq's ``adam`` and ``adamax`` do it, "AdamW"):
θ ← θ − η·λ·θ before the step, at the scheduled learning rate η and never modulated by SAGE.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .functional import bias_correction

__all__ = [
    "BaseStep",
    "Constants",
    "BaseOptimizer",
    "ADAM",
    "ADAMAX",
    "SGD",
    "LION",
    "BASES",
    "group_constants",
    "TensorScalars",
    "step_scalars",
    "apply_step_",
]


class BaseStep(NamedTuple):
    """One tensor's update ``−size · numerator / denominator`` (no denominator: ``−size · numerator``)."""

    numerator: Tensor
    denominator: Optional[Tensor]
    size: float


class Constants(NamedTuple):
    """A group's hyper-parameters that stay fixed during training (compiled in as constants)."""

    betas: Tuple[float, float]
    eps: float
    momentum: float
    sage: bool
    beta0: float
    sage_eps: float
    decays_weights: bool
    """Whether weight decay is on (its size ηλ follows the learning rate: it is not a constant)."""


def group_constants(group: dict) -> Constants:
    """The fixed hyper-parameters of ``group`` (zeros for those its optimizer does not have)."""
    return Constants(
        tuple(group.get("betas", (0.0, 0.0))), group.get("eps", 0.0), group.get("momentum", 0.0),
        bool(group["sage"]), group["beta0"], group["sage_eps"], group["weight_decay"] != 0,
    )


Steps = Tuple[List[Tensor], Optional[List[Tensor]]]
"""Numerators and denominators (None: no denominator) of a list of tensors."""

ForeachStep = Callable[[Constants, List[Tensor], Dict[str, List[Tensor]]], Steps]
"""Advances the state lists (by key) of tensors with these gradients; returns their steps."""


@dataclass(frozen=True)
class BaseOptimizer:
    """One base optimizer of the registry (see the module's docstring)."""

    name: str
    state_keys: Callable[[Constants], Tuple[str, ...]]
    """The keys of the state buffers a group with these constants keeps."""
    step_foreach: ForeachStep
    step_size: Callable[[dict, int], float]
    """"size" for a group at update t (the tensor's ``step``, counted from 1)."""
    kernel: Optional[str]
    """The name of this base in the fused C++ kernel; None where the kernel does not implement it."""

    def init(self, param: Tensor, group: dict) -> Dict[str, Tensor]:
        """The state before the first update: a zero buffer like ``param`` for every key."""
        return {key: torch.zeros_like(param) for key in self.state_keys(group_constants(group))}

    def step(self, state: dict, grad: Tensor, group: dict) -> BaseStep:
        """The reference step of one tensor at update t = ``state["step"]``, its state advanced in place."""
        constants = group_constants(group)
        states = {key: [state[key]] for key in self.state_keys(constants)}
        numerators, denominators = self.step_foreach(constants, [grad], states)
        denominator = None if denominators is None else denominators[0]
        return BaseStep(numerators[0], denominator, self.step_size(group, state["step"]))


def fixed_keys(*keys: str) -> Callable[[Constants], Tuple[str, ...]]:
    """``state_keys`` of a base whose buffers do not depend on its hyper-parameters."""
    return lambda constants: keys


def adam_step_foreach(constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]]) -> Steps:
    """Adam as fairseq's ``adam`` computes it:

        m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²,   numerator = m,   denominator = √v + eps.
    """
    beta1, beta2 = constants.betas
    exp_avgs, exp_avg_sqs = states["exp_avg"], states["exp_avg_sq"]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denominators, constants.eps)
    return exp_avgs, denominators


def adam_step_size(group: dict, step: int) -> float:
    """Adam's step size at update t = ``step``: η·√(1−β2^t)/(1−β1^t)."""
    beta1, beta2 = group["betas"]
    return group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)


def adamax_step_foreach(constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]]) -> Steps:
    """Adamax as fairseq's ``adamax`` computes it (unlike fairseq's, the gradient is left as it was):

        m ← β1·m + (1−β1)·g,   u ← max(β2·u, |g|),   numerator = m,   denominator = u + eps.
    """
    beta1, beta2 = constants.betas
    exp_avgs, exp_infs = states["exp_avg"], states["exp_inf"]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_infs, beta2)
    torch._foreach_maximum_(exp_infs, torch._foreach_abs(grads))
    return exp_avgs, torch._foreach_add(exp_infs, constants.eps)


def adamax_step_size(group: dict, step: int) -> float:
    """Adamax's step size at update t = ``step``: η/(1−β1^t), or η with ``bias_correction=False``."""
    if not group["bias_correction"]:
        return group["lr"]
    return group["lr"] / (1 - group["betas"][0] ** step)


def sgd_state_keys(constants: Constants) -> Tuple[str, ...]:
    """SGD keeps its momentum buffer b only when momentum is on."""
    return ("momentum_buffer",) if constants.momentum != 0 else ()


def sgd_step_foreach(constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]]) -> Steps:
    """SGD with heavy-ball momentum μ, as ``torch.optim.SGD`` (no dampening, no Nesterov):

        b ← μ·b + g  (b = g at the first update),   numerator = b  (g without momentum).
    """
    if constants.momentum == 0:
        return grads, None
    buffers = states["momentum_buffer"]
    torch._foreach_mul_(buffers, constants.momentum)
    torch._foreach_add_(buffers, grads)
    return buffers, None


def lion_step_foreach(constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]]) -> Steps:
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"):

        numerator = sign(β1·m + (1−β1)·g),   then m ← β2·m + (1−β2)·g.
    """
    beta1, beta2 = constants.betas
    exp_avgs = states["exp_avg"]
    directions = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(directions, grads, alpha=1 - beta1)
    torch._foreach_sign_(directions)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)
    return directions, None


def lr_step_size(group: dict, step: int) -> float:
    """The step size of SGD and Lion: η at every update."""
    return group["lr"]


ADAM = BaseOptimizer("adam", fixed_keys("exp_avg", "exp_avg_sq"), adam_step_foreach, adam_step_size, "adam")
ADAMAX = BaseOptimizer(
    "adamax", fixed_keys("exp_avg", "exp_inf"), adamax_step_foreach, adamax_step_size, "adamax"
)
SGD = BaseOptimizer("sgd", sgd_state_keys, sgd_step_foreach, lr_step_size, "sgd")
LION = BaseOptimizer("lion", fixed_keys("exp_avg"), lion_step_foreach, lr_step_size, "lion")

BASES: Dict[str, BaseOptimizer] = {base.name: base for base in (ADAM, ADAMAX, SGD, LION)}
"""Every base optimizer, by name."""


class TensorScalars(NamedTuple):
    """The numbers of one update that change from update to update, for a list of tensors."""

    sizes: List[float]
    """Each tensor's base-step size (its own t)."""
    corrections: List[float]
    """Each tensor's 1 − β0^t (SAGE's bias correction)."""
    decay: float
    """The group's weight-decay step ηλ."""


def step_scalars(base: BaseOptimizer, group: dict, steps: Sequence[int]) -> TensorScalars:
    """:class:`TensorScalars` of the tensors of ``group`` at updates ``steps`` (computed once for
    each distinct t: the tensors of a group usually share it)."""
    by_step = {t: (base.step_size(group, t), bias_correction(group["beta0"], t)) for t in set(steps)}
    return TensorScalars(
        [by_step[t][0] for t in steps], [by_step[t][1] for t in steps], group["lr"] * group["weight_decay"]
    )


def apply_step_(param: Tensor, step: BaseStep, lr: float, weight_decay: float) -> None:
    """θ ← θ − η·λ·θ, then θ ← θ − size · numerator / denominator (in place)."""
    if weight_decay != 0:
        param.add_(param, alpha=-weight_decay * lr)
    if step.denominator is None:
        param.add_(step.numerator, alpha=-step.size)
    else:
        param.addcdiv_(step.numerator, step.denominator, value=-step.size)
