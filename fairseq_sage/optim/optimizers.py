"""Adam-SAGE, Adamax-SAGE, SGD-SAGE and Lion-SAGE as ``torch.optim.Optimizer`` classes.

Each update of a tensor θ with gradient g is a chain of three transformations:

1. the base optimizer's step (its entry in the registry :mod:`fairseq_sage.optim.base_steps`):
   −size · numerator / denominator;
2. SAGE (:mod:`fairseq_sage.optim.functional`): numerator ← numerator ⊙ (U + ε)/(Ī_c + ε), skipped for
   parameter groups with ``sage=False`` (which then keep no Ī buffer);
3. decoupled weight decay θ ← θ − η·λ·θ, then the step is added to θ.

Every hyper-parameter may be set per parameter group. Half-precision parameters are updated
through a float32 copy, with float32 state, as fairseq's own optimizers do.

``impl`` picks how the chain is computed (:mod:`fairseq_sage.optim.implementations`): the per-tensor
reference written here, or a multi-tensor or fused kernel over all tensors at once; by default
the fastest that runs on the parameters' device. All give the same state and results within
float32 rounding.
"""

import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from . import base_steps, fused_cpu, implementations
from .functional import sage_multiplier_

__all__ = ["AdamSAGE", "AdamaxSAGE", "SGDSAGE", "LionSAGE", "DEFAULT_SAGE_EPS"]

DEFAULT_SAGE_EPS = 1e-12
"""Default ε of the SAGE multiplier (U + ε)/(Ī_c + ε).

Per-element |θ·g| of a ``transformer_iwslt_de_en`` had a median of 2.7e-6 at initialisation and
8.3e-8 after 10 updates (``benchmarks/sensitivity_magnitude.py``, see the README), so ε = 1e-12
leaves the multiplier of every weight that carries signal untouched, while a weight or gradient
that is exactly 0 gets m = 1 instead of 0/0.
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


class _SAGEOptimizer(torch.optim.Optimizer):
    """A base step (the registry entry ``_base``) modulated element-wise by SAGE.

    Besides their hyper-parameters, the optimizers take ``impl`` (see
    :mod:`fairseq_sage.optim.implementations`; default "auto") and ``check_finite`` (default True: an
    update whose gradients hold a NaN or an infinity is skipped, see :meth:`step`).
    """

    _base: base_steps.BaseOptimizer

    def __init__(self, params: Iterable, defaults: dict, impl: str, check_finite: bool):
        self.impl = implementations.check_implementation(impl)
        self.check_finite = check_finite
        super().__init__(params, defaults)

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

    def load_state_dict(self, state_dict: dict) -> None:
        """Load ``state_dict``, keeping the float32 state of float16/bfloat16 parameters float32.

        torch's ``Optimizer.load_state_dict`` casts floating-point state to each parameter's dtype,
        which would round Ī and the moments of a half-precision parameter to half precision.
        """
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, param in zip(saved_ids, params):
            if param.dtype not in LOW_PRECISION or saved_id not in state_dict["state"]:
                continue
            for key, value in state_dict["state"][saved_id].items():
                if torch.is_tensor(value) and value.is_floating_point() and key != "step":
                    self.state[param][key] = value.to(device=param.device, dtype=torch.float32, copy=True)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """Apply one update to every parameter that has a gradient.

        If any gradient holds a NaN or an infinity, nothing changes (one bad batch must not poison
        Ī and the moments) and a RuntimeWarning says that the update was skipped. This check reads
        every gradient once more, before anything is written (where the fused kernel updates the
        CPU tensors, it makes the check too); ``check_finite=False`` leaves it to the caller
        (fairseq's trainer checks the gradient norm before it steps the optimizer).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gradients = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if self.check_finite and not self._gradients_finite([g for g in gradients if not g.is_sparse]):
            warnings.warn(f"{type(self).__name__}: a gradient holds NaN or inf; update skipped, "
                          "weights and optimizer state left unchanged", RuntimeWarning)
            return loss
        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            work.append((group, params, [self._advance_state(p, group) for p in params]))
        implementations.update_(self._base, self.impl, work, self._update_parameter)
        return loss

    def _gradients_finite(self, gradients: List[Tensor]) -> bool:
        """:func:`all_finite`, by the fused kernel where it updates the CPU tensors."""
        on_cpu = any(g.device.type == "cpu" for g in gradients)
        kernel = on_cpu and implementations.choose_implementation(self.impl, "cpu", self._base) == "cpp"
        return all_finite(gradients, kernel)

    def _advance_state(self, param: Tensor, group: dict) -> dict:
        """``param``'s state, created (float32 for half-precision ``param``) at its first update,
        with ``step`` advanced to the update about to be applied."""
        if param.grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        state = self.state[param]
        low_precision = param.dtype in LOW_PRECISION
        if not state:
            weights = torch.empty_like(param, dtype=torch.float32) if low_precision else param
            state["step"] = 0
            state.update(self._base.init(weights, group))
            if group["sage"]:
                state["sensitivity_ema"] = torch.zeros_like(weights)
        elif low_precision:
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = value.float()
        state["step"] += 1
        return state

    def _update_parameter(self, param: Tensor, state: dict, group: dict) -> None:
        """The reference update of one parameter, its ``state`` already advanced."""
        low_precision = param.dtype in LOW_PRECISION
        grad = param.grad.float() if param.grad.dtype in LOW_PRECISION else param.grad
        weights = param.float() if low_precision else param
        step = self._base.step(state, grad, group)
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

    _base = base_steps.ADAM

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
        impl: str = "auto",
        check_finite: bool = True,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            beta0=beta0, sage_eps=sage_eps, sage=sage,
        )
        super().__init__(params, defaults, impl, check_finite)


class AdamaxSAGE(_SAGEOptimizer):
    """Adamax (fairseq's ``adamax``, decoupled weight decay) with SAGE learning-rate modulation.

    θ ← θ − η·λ·θ − η/(1−β1^t) · m ⊙ (U + ε_s)/(Ī_c + ε_s) / (u + eps)
    """

    _base = base_steps.ADAMAX

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
        impl: str = "auto",
        check_finite: bool = True,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            bias_correction=bias_correction, beta0=beta0, sage_eps=sage_eps, sage=sage,
        )
        super().__init__(params, defaults, impl, check_finite)


class SGDSAGE(_SAGEOptimizer):
    """SGD with momentum (``torch.optim.SGD``, but decoupled weight decay) with SAGE modulation.

    b ← μ·b + g,   θ ← θ − η·λ·θ − η · b ⊙ (U + ε_s)/(Ī_c + ε_s)
    """

    _base = base_steps.SGD

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        beta0: float = 0.8,
        sage_eps: float = DEFAULT_SAGE_EPS,
        sage: bool = True,
        impl: str = "auto",
        check_finite: bool = True,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            beta0=beta0, sage_eps=sage_eps, sage=sage,
        )
        super().__init__(params, defaults, impl, check_finite)


class LionSAGE(_SAGEOptimizer):
    """Lion (Chen et al., 2023; decoupled weight decay) with SAGE learning-rate modulation.

    θ ← θ − η·λ·θ − η · sign(β1·m + (1−β1)·g) ⊙ (U + ε_s)/(Ī_c + ε_s),
    then m ← β2·m + (1−β2)·g
    """

    _base = base_steps.LION

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: Tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        beta0: float = 0.8,
        sage_eps: float = DEFAULT_SAGE_EPS,
        sage: bool = True,
        impl: str = "auto",
        check_finite: bool = True,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, beta0=beta0, sage_eps=sage_eps, sage=sage,
        )
        super().__init__(params, defaults, impl, check_finite)
