"""Adam-SAGE, Adamax-SAGE, SGD-SAGE and Lion-SAGE as ``torch.optim.Optimizer`` classes.

Each update of a tensor θ with gradient g is a chain of three transformations:

1. the base optimizer's step (its entry in the registry :mod:`fairseq_sage.optim.base_steps`):
   −size · numerator / denominator;
2. SAGE (:mod:`fairseq_sage.optim.functional`): numerator ← numerator ⊙ (U + ε)/(Ī_c + ε), skipped for
   parameter groups with ``sage=False`` (which then keep no Ī buffer);
3. decoupled weight decay θ ← θ − η·λ·θ, then the step is added to θ.

Every hyper-parameter may be set per parameter group, and must be finite and in range (checked as
each group is added). Half-precision parameters are updated through a float32 copy, with float32
state, as fairseq's own optimizers do. Parameters given as ``(name, tensor)`` pairs
(``model.named_parameters()``) are named in ``state_dict()``, and ``load_state_dict`` then moves
each parameter's state with its name (:mod:`fairseq_sage.optim.named_state`), also when the
parameters were grouped otherwise when the state was saved.

``impl`` picks how the chain is computed (:mod:`fairseq_sage.optim.implementations`): the per-tensor
reference written here, or a multi-tensor or fused kernel over all tensors at once; by default
the fastest that runs on the parameters' device. All give the same state and results within
float32 rounding.
"""

import math
import numbers
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from . import base_steps, fused_cpu, implementations
from .functional import sage_multiplier_
from .named_state import align_by_name

__all__ = ["AdamSAGE", "AdamaxSAGE", "SGDSAGE", "LionSAGE", "DEFAULT_SAGE_EPS"]

DEFAULT_SAGE_EPS = 1e-12
"""Default ε of the SAGE multiplier (U + ε)/(Ī_c + ε).

Per-element |θ·g| of a ``transformer_iwslt_de_en`` had a median of 2.7e-6 at initialisation and
8.3e-8 after 10 updates (``benchmarks/sensitivity_magnitude.py``, see the README), so ε = 1e-12
leaves the multiplier of every weight that carries signal untouched, while a weight or gradient
that is exactly 0 gets m = 1 instead of 0/0.
"""

LOW_PRECISION = (torch.float16, torch.bfloat16)


LOWER_BOUNDS = {"lr": (0.0, ">="), "eps": (0.0, ">="), "weight_decay": (0.0, ">="), "sage_eps": (0.0, ">")}
"""Hyper-parameters with a lower bound only; ε of SAGE must be positive, or (0 + 0)/(0 + 0) is NaN
for every element whose weight or gradient is 0."""

UNIT_INTERVAL = ("beta0", "betas", "momentum")
"""Hyper-parameters in [0, 1)."""


def _finite_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_hyperparameters(group: dict, names: Dict[str, str]) -> None:
    """Raise ValueError unless every learning rate, eps, weight decay, β, momentum and SAGE value in
    ``group`` is a finite number in its range: lr, eps, weight decay >= 0; the SAGE ε > 0; β0, each
    β (a pair) and momentum in [0, 1).

    ``names`` maps a keyword ("beta0", "betas", ...) to the name the user knows it by (a fairseq flag).
    """
    for key, (bound, relation) in LOWER_BOUNDS.items():
        if key in group:
            name = names.get(key, key)
            value = _finite_number(group[key], name)
            if not (value > bound if relation == ">" else value >= bound):
                raise ValueError(f"{name} must be {relation} {bound:g}, got {group[key]}")
    for key in UNIT_INTERVAL:
        if key not in group:
            continue
        name, values = names.get(key, key), group[key]
        if key == "betas" and not (isinstance(values, (tuple, list)) and len(values) == 2):
            raise ValueError(f"{name} must be a pair (beta1, beta2), got {values!r}")
        for value in values if key == "betas" else (values,):
            if not 0.0 <= _finite_number(value, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {group[key]}")


def _pair(betas: Any) -> Any:
    """``betas`` as a tuple if it is a list or tuple (else as given, for the check to name it)."""
    return tuple(betas) if isinstance(betas, (list, tuple)) else betas


def check_parameters(params: Iterable[Tensor], optimizer: str) -> None:
    """Raise ValueError for a parameter the optimizers cannot update (a complex one)."""
    for param in params:
        if param.is_complex():
            raise ValueError(f"{optimizer} does not support complex parameters (got one of dtype "
                             f"{param.dtype}); optimize torch.view_as_real(param) instead")


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

    disable_mem_eff_fp16_loading_hack = True
    """Tells fairseq's ``--memory-efficient-fp16`` wrapper not to re-assign the loaded state by
    position after :meth:`load_state_dict` (which keeps float32 state float32 itself, and may have
    moved state by name)."""

    def __init__(self, params: Iterable, defaults: dict, impl: str, check_finite: bool):
        self.impl = implementations.check_implementation(impl)
        self.check_finite = check_finite
        super().__init__(params, defaults)

    def __getstate__(self) -> dict:
        """What ``copy.deepcopy``, ``pickle`` and ``torch.save(optimizer)`` keep: torch's state,
        groups and defaults, and the settings kept outside ``defaults``."""
        return dict(super().__getstate__(), impl=self.impl, check_finite=self.check_finite)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (the constructor adds each of its own this way) if its parameters and values
        pass :func:`check_parameters` and :func:`check_hyperparameters`; else raise ValueError and
        leave the groups as they were."""
        super().add_param_group(param_group)
        try:
            check_parameters(self.param_groups[-1]["params"], type(self).__name__)
            check_hyperparameters(self.param_groups[-1], {})
        except ValueError:
            self.param_groups.pop()
            raise

    @property
    def supports_memory_efficient_fp16(self) -> bool:
        return True

    @property
    def supports_flat_params(self) -> bool:
        return True

    @property
    def sage_param_groups(self) -> List[dict]:
        """The groups, with ``sage``, ``beta0`` and ``sage_eps``, that
        :func:`fairseq_sage.optim.diagnostics.sage_statistics` reads with :attr:`state` (as
        :attr:`fairseq_sage.optim.wrapper.SAGE.sage_param_groups` gives them for the wrapper)."""
        return self.param_groups

    def load_state_dict(self, state_dict: dict) -> None:
        """Load ``state_dict``: by parameter name where both it and the groups name their parameters
        (:func:`~fairseq_sage.optim.named_state.align_by_name`), else by position as torch does;
        float32 state of float16/bfloat16 parameters stays float32; then :meth:`complete_state`.

        torch's ``Optimizer.load_state_dict`` casts floating-point state to each parameter's dtype,
        which would round Ī and the moments of a half-precision parameter to half precision.
        """
        state_dict = align_by_name(state_dict, self.param_groups)
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, param in zip(saved_ids, params):
            if param.dtype not in LOW_PRECISION or saved_id not in state_dict["state"]:
                continue
            for key, value in state_dict["state"][saved_id].items():
                if torch.is_tensor(value) and value.is_floating_point() and key != "step":
                    self.state[param][key] = value.to(device=param.device, dtype=torch.float32, copy=True)
        self.complete_state()

    def complete_state(self) -> None:
        """Give each parameter that has state exactly the entries its group's settings now ask for.

        A parameter of a group that has become a SAGE group (``sage=True``) gets Ī = 0 and one that
        has left SAGE loses its Ī; SGD switched to momentum gets a zero buffer (b = g at the next
        update, as at a first one). Ī's bias correction 1 − β0^t keeps counting t from the
        parameter's first update, so for a weight that joins SAGE late it is ~1 at once: with a
        steady sensitivity its multiplier starts at the bound β0/(1 − β0) that the multiplier
        never exceeds, and falls to the usual values within about 1/(1 − β0) updates.
        """
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param)
                if not state:
                    continue
                weights = torch.empty_like(param, dtype=torch.float32) if param.dtype in LOW_PRECISION else param
                wanted = set(self._base.init(weights.new_empty(0), group))
                if group["sage"]:
                    wanted.add("sensitivity_ema")
                for key in [k for k in state if k != "step" and k not in wanted]:
                    del state[key]
                missing = wanted - set(state)
                if missing:
                    initial = dict(self._base.init(weights, group), sensitivity_ema=torch.zeros_like(weights))
                    state.update({key: initial[key] for key in missing})

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
        if any(g.is_sparse for g in gradients):  # before any state changes
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        if self.check_finite and not self._gradients_finite(gradients):
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
            lr=lr, betas=_pair(betas), eps=eps, weight_decay=weight_decay,
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
            lr=lr, betas=_pair(betas), eps=eps, weight_decay=weight_decay,
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
            lr=lr, betas=_pair(betas), weight_decay=weight_decay, beta0=beta0, sage_eps=sage_eps, sage=sage,
        )
        super().__init__(params, defaults, impl, check_finite)
