"""The registry of base optimizers, each step written once as "update = −size · numerator / denominator".

Every base optimizer is one :class:`BaseOptimizer` entry of :data:`BASES`, which declares

- its hyper-parameters (:attr:`~BaseOptimizer.hyperparameters`): keyword, default, bound and
  fairseq flag of each, from which the torch class (:mod:`fairseq_sage.optim.optimizers`) and the
  fairseq adapter (:mod:`fairseq_sage.fairseq.optimizers`) are made;
- its state: the keys of its buffers (:attr:`~BaseOptimizer.state_keys`), each a float32 buffer of
  the parameter's shape that starts at zero, and the numbers it keeps per tensor
  (:attr:`~BaseOptimizer.scalar_state`, advanced by :attr:`~BaseOptimizer.advance` at each update);
- its numbers at update t (:attr:`~BaseOptimizer.coefficients`, which receives the tensor's state
  and so its step count t): the step size "size", then any coefficients its step needs;
- its step, in foreach form (:attr:`~BaseOptimizer.step_foreach`): it advances the buffers of a
  list of tensors and returns their numerators and denominators; the per-tensor reference step
  (:meth:`~BaseOptimizer.step`) is that function on one-element lists;
- the name under which the fused C++ kernel (``csrc/fused_cpu.cpp``) implements it
  (:attr:`~BaseOptimizer.kernel`), or None: such a base runs the foreach and compiled paths.

Every implementation (:mod:`fairseq_sage.optim.implementations`) reads the registry; SAGE (see
:mod:`fairseq_sage.optim.functional`) sits between the step and :func:`apply_step_`, multiplying
``numerator`` element-wise by its learning-rate multiplier. The arithmetic, and its order, is that of
fairseq's ``adam`` and ``adamax``, of ``torch.optim.SGD`` and of Lion's paper, so that a parameter
group with SAGE switched off gives the same bits as fairseq's and torch's optimizers on the reference
path; NAdam is ``torch.optim.NAdam``'s, to float rounding.

Weight decay is decoupled (as fairseq's ``adam`` and ``adamax`` do it, "AdamW"):
θ ← θ − η·λ·θ before the step, at the scheduled learning rate η and never modulated by SAGE.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .functional import bias_correction
from .hyperparameters import HyperParameter

__all__ = [
    "BaseStep",
    "Constants",
    "BaseOptimizer",
    "ADAM",
    "ADAMAX",
    "SGD",
    "LION",
    "NADAM",
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


Scalars = Sequence[Union[float, Tensor]]
"""One number per tensor: Python numbers, or 0-dim tensors under ``torch.compile``."""

Steps = Tuple[List[Tensor], Optional[List[Tensor]]]
"""Numerators and denominators (None: no denominator) of a list of tensors."""

ForeachStep = Callable[[Constants, List[Tensor], Dict[str, List[Tensor]], Sequence[Scalars]], Steps]
"""Advances the state lists (by key) of tensors with these gradients; returns their steps. The
last argument holds the base's coefficients after the size (see ``BaseOptimizer.coefficients``),
each as one number per tensor."""


@dataclass(frozen=True)
class BaseOptimizer:
    """One base optimizer of the registry (see the module's docstring)."""

    name: str
    hyperparameters: Tuple[HyperParameter, ...]
    """Its keywords, in the torch class's order (SAGE's follow them)."""
    state_keys: Callable[[Constants], Tuple[str, ...]]
    """The keys of the state buffers a group with these constants keeps."""
    step_foreach: ForeachStep
    coefficients: Callable[[dict, dict], Tuple[float, ...]]
    """The numbers of a tensor's update from its group and state (``state["step"]`` is t, counted
    from 1, and scalar state is already advanced): its size, then the coefficients ``step_foreach``
    and the kernel take (at most three)."""
    kernel: Optional[str]
    """The name of this base in the fused C++ kernel; None where the kernel does not implement it."""
    scalar_state: Tuple[Tuple[str, float], ...] = ()
    """(key, initial value) of each number it keeps per tensor."""
    advance: Optional[Callable[[dict, dict], None]] = None
    """Advances the scalar state of a tensor (``state``, with ``step`` already t) in its group;
    called once per update."""

    def init(self, param: Tensor, group: dict) -> Dict[str, Union[Tensor, float]]:
        """The state before the first update: a zero buffer like ``param`` for every key and the
        initial scalar state."""
        buffers = {key: torch.zeros_like(param) for key in self.state_keys(group_constants(group))}
        return dict(buffers, **dict(self.scalar_state))

    def step(self, state: dict, grad: Tensor, group: dict) -> BaseStep:
        """The reference step of one tensor at update t = ``state["step"]``, its state advanced in place."""
        constants = group_constants(group)
        states = {key: [state[key]] for key in self.state_keys(constants)}
        size, *coefficients = self.coefficients(group, state)
        numerators, denominators = self.step_foreach(constants, [grad], states, [[c] for c in coefficients])
        denominator = None if denominators is None else denominators[0]
        return BaseStep(numerators[0], denominator, size)


def fixed_keys(*keys: str) -> Callable[[Constants], Tuple[str, ...]]:
    """``state_keys`` of a base whose buffers do not depend on its hyper-parameters."""
    return lambda constants: keys


def lr_entry(default: float) -> HyperParameter:
    """The learning rate η (fairseq's ``--lr``, which its lr scheduler follows)."""
    return HyperParameter("lr", default, "nonnegative", "--lr", "learning rate")


def betas_entry(default: Tuple[float, float], flag: str, help: str) -> HyperParameter:
    """The pair (β1, β2) of a moment-based base, set by ``flag``."""
    return HyperParameter("betas", default, "unit pair", flag, help)


def eps_entry(flag: str, help: str) -> HyperParameter:
    """The ε of a denominator (default 1e-8), set by ``flag``."""
    return HyperParameter("eps", 1e-8, "nonnegative", flag, help)


WEIGHT_DECAY = HyperParameter("weight_decay", 0.0, "nonnegative", "--weight-decay", "decoupled weight decay")


def _adam_moments_foreach(states: Dict[str, List[Tensor]], grads: List[Tensor], beta1: float, beta2: float):
    """Adam's moments, in place: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g²; returns (m, v)."""
    exp_avgs, exp_avg_sqs = states["exp_avg"], states["exp_avg_sq"]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    return exp_avgs, exp_avg_sqs


def adam_step_foreach(
    constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]], coefficients: Sequence[Scalars]
) -> Steps:
    """Adam as fairseq's ``adam`` computes it:

        m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²,   numerator = m,   denominator = √v + eps.
    """
    beta1, beta2 = constants.betas
    exp_avgs, exp_avg_sqs = _adam_moments_foreach(states, grads, beta1, beta2)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denominators, constants.eps)
    return exp_avgs, denominators


def adam_coefficients(group: dict, state: dict) -> Tuple[float]:
    """Adam's step size at update t: η·√(1−β2^t)/(1−β1^t)."""
    beta1, beta2 = group["betas"]
    step = state["step"]
    return (group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step),)


def adamax_step_foreach(
    constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]], coefficients: Sequence[Scalars]
) -> Steps:
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


def adamax_coefficients(group: dict, state: dict) -> Tuple[float]:
    """Adamax's step size at update t: η/(1−β1^t), or η with ``bias_correction=False``."""
    if not group["bias_correction"]:
        return (group["lr"],)
    return (group["lr"] / (1 - group["betas"][0] ** state["step"]),)


def sgd_state_keys(constants: Constants) -> Tuple[str, ...]:
    """SGD keeps its momentum buffer b only when momentum is on."""
    return ("momentum_buffer",) if constants.momentum != 0 else ()


def sgd_step_foreach(
    constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]], coefficients: Sequence[Scalars]
) -> Steps:
    """SGD with heavy-ball momentum μ, as ``torch.optim.SGD`` (no dampening, no Nesterov):

        b ← μ·b + g  (b = g at the first update),   numerator = b  (g without momentum).
    """
    if constants.momentum == 0:
        return grads, None
    buffers = states["momentum_buffer"]
    torch._foreach_mul_(buffers, constants.momentum)
    torch._foreach_add_(buffers, grads)
    return buffers, None


def lion_step_foreach(
    constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]], coefficients: Sequence[Scalars]
) -> Steps:
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


def lr_coefficients(group: dict, state: dict) -> Tuple[float]:
    """The step size of SGD and Lion: η at every update."""
    return (group["lr"],)


def nadam_momentum(group: dict, step: int) -> float:
    """NAdam's momentum coefficient μ_t = β1·(1 − ½·0.96^(t·ψ)), ψ the momentum decay."""
    return group["betas"][0] * (1 - 0.5 * 0.96 ** (step * group["momentum_decay"]))


def nadam_advance(state: dict, group: dict) -> None:
    """μ_product ← μ_product · μ_t, the product of the μ_i of updates 1 … t."""
    state["mu_product"] *= nadam_momentum(group, state["step"])


def nadam_coefficients(group: dict, state: dict) -> Tuple[float, float, float, float]:
    """NAdam's numbers at update t, after :func:`nadam_advance`: η, the weight of g
    (1 − μ_t)/(1 − Π_{i≤t} μ_i), the weight of m μ_{t+1}/(1 − Π_{i≤t+1} μ_i), and 1 − β2^t."""
    step, product = state["step"], state["mu_product"]
    momentum, next_momentum = nadam_momentum(group, step), nadam_momentum(group, step + 1)
    return (
        group["lr"],
        (1 - momentum) / (1 - product),
        next_momentum / (1 - product * next_momentum),
        1 - group["betas"][1] ** step,
    )


def nadam_step_foreach(
    constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]], coefficients: Sequence[Scalars]
) -> Steps:
    """NAdam (Dozat, 2016) as ``torch.optim.NAdam`` defines it, with the coefficients of
    :func:`nadam_coefficients` (weights a of g and b of m, the correction 1 − β2^t):

        m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²,
        numerator = a·g + b·m,   denominator = √(v/(1 − β2^t)) + eps.
    """
    gradient_weights, momentum_weights, corrections = coefficients
    beta1, beta2 = constants.betas
    exp_avgs, exp_avg_sqs = _adam_moments_foreach(states, grads, beta1, beta2)
    numerators = torch._foreach_mul(grads, gradient_weights)
    torch._foreach_add_(numerators, torch._foreach_mul(exp_avgs, momentum_weights))
    denominators = torch._foreach_div(exp_avg_sqs, corrections)
    torch._foreach_sqrt_(denominators)
    torch._foreach_add_(denominators, constants.eps)
    return numerators, denominators


ADAM = BaseOptimizer(
    "adam",
    (lr_entry(1e-3), betas_entry((0.9, 0.999), "--adam-betas", "betas for Adam optimizer"),
     eps_entry("--adam-eps", "epsilon for Adam optimizer"), WEIGHT_DECAY),
    fixed_keys("exp_avg", "exp_avg_sq"), adam_step_foreach, adam_coefficients, kernel="adam",
)
ADAMAX = BaseOptimizer(
    "adamax",
    (lr_entry(2e-3), betas_entry((0.9, 0.999), "--adamax-betas", "betas for Adamax optimizer"),
     eps_entry("--adamax-eps", "epsilon for Adamax optimizer"), WEIGHT_DECAY,
     HyperParameter("bias_correction", True, "switch", "--no-bias-correction", "disable bias correction")),
    fixed_keys("exp_avg", "exp_inf"), adamax_step_foreach, adamax_coefficients, kernel="adamax",
)
SGD = BaseOptimizer(
    "sgd",
    (lr_entry(1e-2), HyperParameter("momentum", 0.0, "unit", "--momentum", "momentum factor"), WEIGHT_DECAY),
    sgd_state_keys, sgd_step_foreach, lr_coefficients, kernel="sgd",
)
LION = BaseOptimizer(
    "lion",
    (lr_entry(1e-4), betas_entry((0.9, 0.99), "--lion-betas", "betas for Lion: beta1 of the update "
                     "sign(beta1*m + (1-beta1)*g), beta2 of the moving average m"), WEIGHT_DECAY),
    fixed_keys("exp_avg"), lion_step_foreach, lr_coefficients, kernel="lion",
)
NADAM = BaseOptimizer(
    "nadam",
    (lr_entry(2e-3), betas_entry((0.9, 0.999), "--nadam-betas", "betas for NAdam optimizer"),
     eps_entry("--nadam-eps", "epsilon for NAdam optimizer"), WEIGHT_DECAY,
     HyperParameter("momentum_decay", 4e-3, "nonnegative", "--momentum-decay",
                    "momentum decay psi of NAdam's mu_t = beta1*(1 - 0.5*0.96^(t*psi))")),
    fixed_keys("exp_avg", "exp_avg_sq"), nadam_step_foreach, nadam_coefficients, kernel="nadam",
    scalar_state=(("mu_product", 1.0),), advance=nadam_advance,
)

BASES: Dict[str, BaseOptimizer] = {base.name: base for base in (ADAM, ADAMAX, SGD, LION, NADAM)}
"""Every base optimizer, by name."""


class TensorScalars(NamedTuple):
    """The numbers of one update that change from update to update, for a list of tensors."""

    coefficients: List[List[float]]
    """The base's numbers (:attr:`BaseOptimizer.coefficients`), each as a list over the tensors:
    first their sizes."""
    corrections: List[float]
    """Each tensor's 1 − β0^t (SAGE's bias correction)."""
    decay: float
    """The group's weight-decay step ηλ."""


def step_scalars(base: BaseOptimizer, group: dict, states: Sequence[dict]) -> TensorScalars:
    """:class:`TensorScalars` of the tensors of ``group`` with these states (``step`` advanced to t)."""
    per_tensor = [base.coefficients(group, state) for state in states]
    return TensorScalars(
        [list(numbers) for numbers in zip(*per_tensor)],
        [bias_correction(group["beta0"], state["step"]) for state in states],
        group["lr"] * group["weight_decay"],
    )


def apply_step_(param: Tensor, step: BaseStep, lr: float, weight_decay: float) -> None:
    """θ ← θ − η·λ·θ, then θ ← θ − size · numerator / denominator (in place)."""
    if weight_decay != 0:
        param.add_(param, alpha=-weight_decay * lr)
    if step.denominator is None:
        param.add_(step.numerator, alpha=-step.size)
    else:
        param.addcdiv_(step.numerator, step.denominator, value=-step.size)
