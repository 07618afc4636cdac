"""Adam-SAGE, Adamax-SAGE, SGD-SAGE, Lion-SAGE and NAdam-SAGE as ``torch.optim.Optimizer`` classes.

Each update of a tensor θ with gradient g is a chain of three transformations:

1. the base optimizer's step (its entry in the registry :mod:`fairseq_sage.optim.base_steps`):
   −size · numerator / denominator;
2. SAGE (:mod:`fairseq_sage.optim.functional`): numerator ← numerator ⊙ (U + ε)/(Ī_c + ε), skipped for
   parameter groups with ``sage=False`` (which then keep no Ī buffer);
3. decoupled weight decay θ ← θ − η·λ·θ, then the step is added to θ.

Each class is one line naming its registry entry (``class AdamSAGE(_SAGEOptimizer, base=ADAM)``):
its keywords, their order and defaults are the entry's hyper-parameters followed by SAGE's
(:data:`SAGE_HYPERPARAMETERS`), then ``impl`` and ``check_finite``. Every hyper-parameter may be set
per parameter group, and must be finite and within the bound its entry declares (checked as each
group is added). Half-precision parameters are updated through a float32 copy, with float32
state, as fairseq's own optimizers do. Parameters given as ``(name, tensor)`` pairs
(``model.named_parameters()``) are named in ``state_dict()``, and ``load_state_dict`` then moves
each parameter's state with its name (:mod:`fairseq_sage.optim.named_state`), also when the
parameters were grouped otherwise when the state was saved.

``impl`` picks how the chain is computed (:mod:`fairseq_sage.optim.implementations`): the per-tensor
reference written here, or a multi-tensor or fused kernel over all tensors at once; by default
the fastest that runs on the parameters' device. All give the same state and results within
float32 rounding.
"""

import inspect
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from . import base_steps, implementations
from .functional import sage_multiplier_
from .hyperparameters import SAGE_HYPERPARAMETERS, HyperParameter
from .named_state import align_by_name
from .validation import LOW_PRECISION_DTYPES, all_finite, check_hyperparameters, check_parameters, in_working_dtype

__all__ = ["AdamSAGE", "AdamaxSAGE", "SGDSAGE", "LionSAGE", "NAdamSAGE", "SAGE_OPTIMIZERS"]


def _pair(betas: Any) -> Any:
    """``betas`` as a tuple if it is a list or tuple (else as given, for the check to name it)."""
    return tuple(betas) if isinstance(betas, (list, tuple)) else betas


SAGE_OPTIMIZERS: Dict[str, type] = {}
"""Every SAGE optimizer class, by the name of its base optimizer (the fairseq adapters are made
from these)."""


def constructor_signature(entries: Tuple[HyperParameter, ...]) -> inspect.Signature:
    """``(params, <entries with their defaults>, impl="auto", check_finite=True)``."""
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [inspect.Parameter("params", keyword)]
        + [inspect.Parameter(entry.name, keyword, default=entry.default) for entry in entries]
        + [inspect.Parameter("impl", keyword, default="auto"), inspect.Parameter("check_finite", keyword, default=True)]
    )


class _SAGEOptimizer(torch.optim.Optimizer):
    """A base step (the registry entry ``_base``) modulated element-wise by SAGE.

    A subclass names its entry, ``class AdamSAGE(_SAGEOptimizer, base=base_steps.ADAM)``, and takes
    the keywords :attr:`hyperparameters` declares, with their defaults, and then ``impl`` (see
    :mod:`fairseq_sage.optim.implementations`; default "auto") and ``check_finite`` (default True: an
    update whose gradients hold a NaN or an infinity is skipped, see :meth:`step`).
    """

    _base: base_steps.BaseOptimizer
    hyperparameters: Tuple[HyperParameter, ...]
    """The base's hyper-parameters, then SAGE's: the constructor's keywords, in order."""

    disable_mem_eff_fp16_loading_hack = True
    """Tells fairseq's ``--memory-efficient-fp16`` wrapper not to re-assign the loaded state by
    position after :meth:`load_state_dict` (which keeps float32 state float32 itself, and may have
    moved state by name)."""

    def __init_subclass__(cls, base: Optional[base_steps.BaseOptimizer] = None, **kwargs):
        """Give a subclass naming ``base`` its hyper-parameters and signature, and list it in
        :data:`SAGE_OPTIMIZERS` (a subclass naming none keeps its parent's)."""
        super().__init_subclass__(**kwargs)
        if base is None:
            return
        cls._base = base
        cls.hyperparameters = base.hyperparameters + SAGE_HYPERPARAMETERS
        cls.__signature__ = constructor_signature(cls.hyperparameters)
        SAGE_OPTIMIZERS[base.name] = cls

    def __init__(self, params: Iterable, *args, **kwargs):
        arguments = self.__signature__.bind(params, *args, **kwargs)
        arguments.apply_defaults()
        values = dict(arguments.arguments)
        self.impl = implementations.check_implementation(values.pop("impl"))
        self.check_finite = values.pop("check_finite")
        params = values.pop("params")
        pairs = {entry.name for entry in self.hyperparameters if entry.bound == "unit pair"}
        super().__init__(params, {key: _pair(value) if key in pairs else value for key, value in values.items()})

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
            check_parameters(self.param_groups[-1]["params"], f"{type(self).__name__} does not support complex parameters")
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
            if param.dtype not in LOW_PRECISION_DTYPES or saved_id not in state_dict["state"]:
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
                weights = torch.empty_like(param, dtype=torch.float32) if param.dtype in LOW_PRECISION_DTYPES else param
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
        low_precision = param.dtype in LOW_PRECISION_DTYPES
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
        if self._base.advance is not None:
            self._base.advance(state, group)
        return state

    def _update_parameter(self, param: Tensor, state: dict, group: dict) -> None:
        """The reference update of one parameter, its ``state`` already advanced."""
        grad = in_working_dtype(param.grad)
        weights = in_working_dtype(param)
        step = self._base.step(state, grad, group)
        if group["sage"]:
            multiplier = sage_multiplier_(
                state["sensitivity_ema"], weights, grad, group["beta0"], state["step"], group["sage_eps"]
            )
            step = step._replace(numerator=multiplier.mul_(step.numerator))
        base_steps.apply_step_(weights, step, group["lr"], group["weight_decay"])
        if weights is not param:  # a float32 copy of a half-precision parameter
            param.copy_(weights)


class AdamSAGE(_SAGEOptimizer, base=base_steps.ADAM):
    """Adam (fairseq's ``adam``, decoupled weight decay) with SAGE learning-rate modulation.

    θ ← θ − η·λ·θ − η·√(1−β2^t)/(1−β1^t) · m ⊙ (U + ε_s)/(Ī_c + ε_s) / (√v + eps)
    """


class AdamaxSAGE(_SAGEOptimizer, base=base_steps.ADAMAX):
    """Adamax (fairseq's ``adamax``, decoupled weight decay) with SAGE learning-rate modulation.

    θ ← θ − η·λ·θ − η/(1−β1^t) · m ⊙ (U + ε_s)/(Ī_c + ε_s) / (u + eps)
    """


class SGDSAGE(_SAGEOptimizer, base=base_steps.SGD):
    """SGD with momentum (``torch.optim.SGD``, but decoupled weight decay) with SAGE modulation.

    b ← μ·b + g,   θ ← θ − η·λ·θ − η · b ⊙ (U + ε_s)/(Ī_c + ε_s)
    """


class LionSAGE(_SAGEOptimizer, base=base_steps.LION):
    """Lion (Chen et al., 2023; decoupled weight decay) with SAGE learning-rate modulation.

    θ ← θ − η·λ·θ − η · sign(β1·m + (1−β1)·g) ⊙ (U + ε_s)/(Ī_c + ε_s),
    then m ← β2·m + (1−β2)·g
    """


class NAdamSAGE(_SAGEOptimizer, base=base_steps.NADAM):
    """NAdam (``torch.optim.NAdam``) with SAGE learning-rate modulation; its weight decay is
    decoupled, as that of the other SAGE optimizers (``torch.optim.NAdam(decoupled_weight_decay=True)``),
    at η and never modulated.

    With μ_t = β1·(1 − ½·0.96^(t·ψ)) (ψ: ``momentum_decay``) and v̂ = v/(1 − β2^t):
    θ ← θ − η·λ·θ − η · [(1−μ_t)/(1−Π_{i≤t} μ_i) · g + μ_{t+1}/(1−Π_{i≤t+1} μ_i) · m]
    ⊙ (U + ε_s)/(Ī_c + ε_s) / (√v̂ + eps)
    """
