"""Adam-SAGE, Adamax-SAGE and SGD-SAGE as ``torch.optim.Optimizer`` classes.

Each update of a tensor θ with gradient g is a chain of three transformations:

1. the base optimizer's step (:mod:`fairseq_sage.base_steps`): −size · numerator / denominator;
2. SAGE (:mod:`fairseq_sage.functional`): numerator ← numerator ⊙ (U + ε)/(Ī_c + ε), skipped for
   parameter groups with ``sage=False`` (which then keep no Ī buffer);
3. decoupled weight decay θ ← θ − η·λ·θ, then the step is added to θ.

Every hyper-parameter may be set per parameter group. Half-precision parameters are updated
through a float32 copy, with float32 state, as fairseq's own optimizers do.
"""

from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor

from . import base_steps
from .functional import sage_multiplier_

__all__ = ["AdamSAGE", "AdamaxSAGE", "SGDSAGE", "DEFAULT_SAGE_EPS"]

DEFAULT_SAGE_EPS = 1e-12
"""Default ε of the SAGE multiplier (U + ε)/(Ī_c + ε).

|θ·g| of a trained transformer's weights lies around 1e-9..1e-6 per element (see the README), so
ε = 1e-12 leaves the multiplier of every weight that carries signal untouched, while a weight or
gradient that is exactly 0 gets m = 1 instead of 0/0.
"""

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_hyperparameters(group: dict, names: Dict[str, str]) -> None:
    """Raise ValueError if a learning rate, eps, weight decay, β or momentum in ``group`` is out of range.

    ``names`` maps a keyword ("beta0", "betas", ...) to the name the user knows it by (a fairseq flag).
    """
    for key in ("lr", "eps", "weight_decay", "sage_eps"):
        if key in group and not group[key] >= 0.0:
            raise ValueError(f"{names.get(key, key)} must be >= 0, got {group[key]}")
    for key in ("beta0", "betas", "momentum"):
        values = group.get(key, ())
        for value in values if isinstance(values, (tuple, list)) else (values,):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{names.get(key, key)} must be in [0, 1), got {group[key]}")


class _SAGEOptimizer(torch.optim.Optimizer):
    """A base step (``_init_state``/``_base_step``) modulated element-wise by SAGE."""

    _init_state: Callable[[Tensor, dict], Dict[str, Tensor]]
    _base_step: Callable[[dict, Tensor, dict], base_steps.BaseStep]

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (the constructor adds each of its own this way) after checking its values."""
        super().add_param_group(param_group)
        check_hyperparameters(self.param_groups[-1], {})

    @property
    def supports_memory_efficient_fp16(self) -> bool:
        return True

    @property
    def supports_flat_params(self) -> bool:
        return True

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """Apply one update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update_parameter(param, group)
        return loss

    def _update_parameter(self, param: Tensor, group: dict) -> None:
        if param.grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        low_precision = param.dtype in LOW_PRECISION
        grad = param.grad.float() if param.grad.dtype in LOW_PRECISION else param.grad
        weights = param.float() if low_precision else param
        state = self.state[param]
        if not state:
            state["step"] = 0
            state.update(self._init_state(weights, group))
            if group["sage"]:
                state["sensitivity_ema"] = torch.zeros_like(weights)
        elif low_precision:
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = value.float()
        state["step"] += 1

        step = self._base_step(state, grad, group)
        if group["sage"]:
            multiplier = sage_multiplier_(
                state["sensitivity_ema"], weights, grad, group["beta0"], state["step"], group["sage_eps"]
            )
            step = step._replace(numerator=multiplier.mul_(step.numerator))
        base_steps.apply_step_(weights, step, group["lr"], group["weight_decay"])
        if low_precision:
            param.copy_(weights)


class AdamSAGE(_SAGEOptimizer):
    """Adam (fairseq's ``adam``, decoupled weight decay) with SAGE learning-rate modulation.

    θ ← θ − η·λ·θ − η·√(1−β2^t)/(1−β1^t) · m ⊙ (U + ε_s)/(Ī_c + ε_s) / (√v + eps)
    """

    _init_state = staticmethod(base_steps.adam_init)
    _base_step = staticmethod(base_steps.adam_step)

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        beta0: float = 0.8,
        sage_eps: float = DEFAULT_SAGE_EPS,
        sage: bool = True,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            beta0=beta0, sage_eps=sage_eps, sage=sage,
        )
        super().__init__(params, defaults)


class AdamaxSAGE(_SAGEOptimizer):
    """Adamax (fairseq's ``adamax``, decoupled weight decay) with SAGE learning-rate modulation.

    θ ← θ − η·λ·θ − η/(1−β1^t) · m ⊙ (U + ε_s)/(Ī_c + ε_s) / (u + eps)
    """

    _init_state = staticmethod(base_steps.adamax_init)
    _base_step = staticmethod(base_steps.adamax_step)

    def __init__(
        self,
        params: Iterable,
        lr: float = 2e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        beta0: float = 0.8,
        sage_eps: float = DEFAULT_SAGE_EPS,
        sage: bool = True,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            bias_correction=bias_correction, beta0=beta0, sage_eps=sage_eps, sage=sage,
        )
        super().__init__(params, defaults)


class SGDSAGE(_SAGEOptimizer):
    """SGD with momentum (``torch.optim.SGD``, but decoupled weight decay) with SAGE modulation.

    b ← μ·b + g,   θ ← θ − η·λ·θ − η · b ⊙ (U + ε_s)/(Ī_c + ε_s)
    """

    _init_state = staticmethod(base_steps.sgd_init)
    _base_step = staticmethod(base_steps.sgd_step)

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        beta0: float = 0.8,
        sage_eps: float = DEFAULT_SAGE_EPS,
        sage: bool = True,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            beta0=beta0, sage_eps=sage_eps, sage=sage,
        )
        super().__init__(params, defaults)
