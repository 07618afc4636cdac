"""``SAGE(optimizer)``: SAGE learning-rate modulation on top of any ``torch.optim.Optimizer``.

For every parameter θ that gets SAGE, with gradient g, at its t-th update:

    θ_old  = θ before the update
    m      = (U + ε)/(Ī_c + ε)        from I = |θ_old ⊙ g| (:func:`.functional.sage_multiplier_`)
    θ_new  = what the base optimizer's own ``step()`` makes of θ
    θ      ← (1 − c)·θ_old + m ⊙ (θ_new − (1 − c)·θ_old)

where c·θ_old is the decoupled weight decay the base optimizer applied in that step (0 where it
has none): SAGE scales the base optimizer's own update element-wise and leaves the decay at
η(t)·λ, unmodulated, as :class:`~fairseq_sage.optim.AdamSAGE` does. c is read from a
:data:`DECAY_RULES` entry for the base optimizer's class:

- decoupled decay θ ← θ·(1 − η·λ) (torch's ``AdamW``, ``Adafactor``, ``Adam``/``NAdam``/``RAdam``
  with ``decoupled_weight_decay=True``): c = η·λ of the parameter's group;
- coupled L2 decay g ← g + λ·θ (torch's ``SGD``, ``Adagrad``, ``Adadelta``, ``RMSprop``,
  ``Adamax``, and ``Adam``/``NAdam``/``RAdam`` by default) is part of the gradient the base
  optimizer follows, so it is part of the update SAGE scales: c = 0. I uses the loss gradient g;
- any other class with a non-zero ``weight_decay`` in a group that gets SAGE is refused (one
  ValueError: set its weight decay to 0, or add a rule with :func:`register_decay_rule`).

Implementations (``impl``): ``cpp`` computes m and the new θ in one pass of the fused CPU kernel
(:func:`.fused_cpu.modulate_`: θ, θ_old, g and Ī each read once, θ and Ī written once, no
temporaries); ``foreach`` with ``torch._foreach_*`` ops over batches of at most
``multi_tensor.CHUNK_ELEMENTS`` elements (large tensors are cut into flat slices), about ten
element-wise passes; ``auto`` (default) takes ``cpp`` for contiguous CPU parameters where the kernel
builds (one warning where it cannot) and ``foreach`` for the rest, as ``impl="cpp"`` does for the
parameters the kernel cannot take. Both combine half-precision parameters in float32 and round
once into their dtype; they agree to float32 rounding.

Memory: the wrapper keeps Ī (float32; float64 for float64 parameters) per SAGE parameter and,
during a step, one copy of the SAGE parameters' weights (θ_old, in their own dtype), plus, on the
``foreach`` path, the temporaries of one batch.
"""

import warnings
from collections import defaultdict
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

import torch
from torch import Tensor

from . import fused_cpu
from .functional import bias_correction, sage_multiplier_foreach_
from .implementations import cpp_kernel_error, fall_back
from .multi_tensor import batches, flat_slices
from .hyperparameters import DEFAULT_SAGE_EPS
from .optimizers import SAGE_OPTIMIZERS
from .validation import all_finite, check_hyperparameters, check_parameters, in_working_dtype, working_dtype

__all__ = ["SAGE", "DecayRule", "DECAY_RULES", "register_decay_rule", "decoupled", "coupled"]

WRAPPER_IMPLEMENTATIONS = ("auto", "foreach", "cpp")
"""What ``SAGE(..., impl=)`` accepts (module doc)."""

SAGE_STATE_KEYS = ("sensitivity_ema", "sage_step")
"""The keys the wrapper adds to each SAGE parameter's entry of the base optimizer's state dict."""


class _Modulated(NamedTuple):
    """One SAGE parameter (or a flat slice of one) to modulate after the base step: its weights θ
    (holding θ_new), θ_old, its gradient, its Ī (``sensitivity_ema``, updated in place), its step t
    and the c of its decay."""

    param: Tensor
    old: Tensor
    grad: Tensor
    ema: Tensor
    step: int
    decay: float


def _slices(items: Iterable[_Modulated]) -> Iterator[_Modulated]:
    """The items, each contiguous one larger than ``multi_tensor.CHUNK_ELEMENTS`` cut into flat slices, so that
    a batch's temporaries stay within that size (:func:`.multi_tensor.batches`)."""
    for item in items:
        for param, old, grad, ema in flat_slices([item.param, item.old, item.grad, item.ema]):
            yield item._replace(param=param, old=old, grad=grad, ema=ema)


class DecayRule(NamedTuple):
    """How a base optimizer class decays weights: ``coefficient(optimizer, group, param_state)``
    gives the c of θ ← (1 − c)·θ it applied in the step just taken (``param_state`` is the base's
    state of the parameter after that step); ``unsupported(group)`` says, for a group it cannot
    describe exactly, why and what to change (None where it can)."""

    coefficient: Callable[[torch.optim.Optimizer, dict, dict], float]
    unsupported: Callable[[dict], Optional[str]] = lambda group: None


def decoupled(optimizer, group: dict, param_state: dict) -> float:
    """θ ← θ·(1 − η·λ) with the group's η and λ."""
    return float(group["lr"]) * group.get("weight_decay", 0.0)


def decoupled_if_flagged(optimizer, group: dict, param_state: dict) -> float:
    """torch's Adam, NAdam, RAdam: decoupled with ``decoupled_weight_decay=True``, else coupled L2."""
    return decoupled(optimizer, group, param_state) if group.get("decoupled_weight_decay") else 0.0


def coupled(optimizer, group: dict, param_state: dict) -> float:
    """L2 decay added to the gradient: part of the base update, which SAGE scales."""
    return 0.0


DECAY_RULES: Dict[type, DecayRule] = {
    torch.optim.Adam: DecayRule(decoupled_if_flagged),  # AdamW is a subclass with the flag set
    torch.optim.NAdam: DecayRule(decoupled_if_flagged),
    torch.optim.RAdam: DecayRule(decoupled_if_flagged),
    torch.optim.Adafactor: DecayRule(decoupled),
    torch.optim.SGD: DecayRule(coupled),
    torch.optim.Adagrad: DecayRule(coupled),
    torch.optim.Adadelta: DecayRule(coupled),
    torch.optim.RMSprop: DecayRule(coupled),
    torch.optim.Adamax: DecayRule(coupled),
}
"""Decay rules by optimizer class; a subclass without an entry of its own uses its parent's."""

PICKLED = ("optimizer", "beta0", "sage_eps", "check_finite", "impl", "sage_params", "state")

REPEATED_CLOSURE = (torch.optim.LBFGS,)
"""Optimizers that evaluate the closure several times per step, which one SAGE multiplier per
step cannot follow."""


def register_decay_rule(optimizer_class: type, rule: DecayRule) -> None:
    """Tell :class:`SAGE` how ``optimizer_class`` decays weights (see :class:`DecayRule`)."""
    DECAY_RULES[optimizer_class] = rule


def decay_rule(optimizer: torch.optim.Optimizer) -> Optional[DecayRule]:
    """The rule of ``optimizer``'s class or of its nearest ancestor that has one."""
    return next((DECAY_RULES[c] for c in type(optimizer).__mro__ if c in DECAY_RULES), None)


SAGE_COMPLEX_REFUSAL = ("SAGE cannot modulate complex parameters", "leave it out of SAGE's params= (it then gets "
                        "the base optimizer's plain update), or optimize torch.view_as_real(param) instead")
"""check_parameters' refusal and fix for a complex parameter given to SAGE."""


def finiteness_view(grad: Tensor) -> Tensor:
    """The elements of ``grad`` as a dense real tensor, for :func:`.validation.all_finite`: a sparse
    gradient's stored values, a complex one's real and imaginary parts."""
    if grad.is_sparse:
        grad = grad.coalesce().values()
    return torch.view_as_real(grad) if grad.is_complex() else grad


def check_sage_hyperparameters(beta0: float, sage_eps: float, names: Optional[Dict[str, str]] = None) -> None:
    """ValueError unless 0 ≤ beta0 < 1 and 0 < sage_eps < ∞ (``names``: the flags users know them by)."""
    check_hyperparameters({"beta0": beta0, "sage_eps": sage_eps}, names or {})


class SAGE(torch.optim.Optimizer):
    """SAGE on top of ``optimizer``: θ ← (1 − c)·θ_old + m ⊙ (θ_new − (1 − c)·θ_old) (module doc).

    ``params`` (default: all of ``optimizer``'s parameters) chooses the parameters that get SAGE;
    the others get the base optimizer's plain update (sparse gradients and complex parameters
    included, where the base supports them). ``param_groups`` and ``defaults`` are the base
    optimizer's, so learning-rate schedulers given this wrapper drive the base optimizer (also
    those that cycle its momentum or β1, which read ``defaults``); ``state`` holds the
    wrapper's own per-parameter ``step`` (t) and ``sensitivity_ema`` (Ī), the base's state stays
    in ``optimizer.state``. ``state_dict()`` is the base's, with ``sensitivity_ema`` and
    ``sage_step`` added to each SAGE parameter's entry and a ``"sage"`` entry holding β0, ε and
    the indices of the SAGE parameters; ``load_state_dict`` restores all of it.

    ``step(closure)`` evaluates the closure once, then updates. With ``check_finite`` (default),
    an update whose gradients hold a NaN or an infinity is skipped entirely (weights, Ī and the
    base's state unchanged) with a RuntimeWarning. ``impl``: one of :data:`WRAPPER_IMPLEMENTATIONS`
    (module doc); ``"cpp"`` raises RuntimeError where the kernel cannot be built.

    Every call checks first and acts after: a refusal (complex SAGE parameters, a sparse gradient
    on one, a weight decay SAGE cannot keep unmodulated, a state dict of other SAGE parameters)
    leaves the weights, the base's state and groups and SAGE's state as they were.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        beta0: float = 0.8,
        sage_eps: float = DEFAULT_SAGE_EPS,
        params: Optional[Iterable[Tensor]] = None,
        check_finite: bool = True,
        impl: str = "auto",
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"SAGE wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, (SAGE, *SAGE_OPTIMIZERS.values())):
            raise ValueError(f"{type(optimizer).__name__} already applies SAGE: use it alone")
        if isinstance(optimizer, REPEATED_CLOSURE):
            raise ValueError(f"SAGE cannot wrap {type(optimizer).__name__}: it evaluates the closure "
                             "several times per step; use an optimizer that steps once per gradient")
        check_sage_hyperparameters(beta0, sage_eps)
        if impl not in WRAPPER_IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {', '.join(WRAPPER_IMPLEMENTATIONS)}, got {impl!r}")
        if impl == "cpp" and cpp_kernel_error():
            raise RuntimeError(f"impl='cpp': {cpp_kernel_error()}; use impl='foreach'")
        self.impl = impl
        self.optimizer = optimizer
        self.beta0 = beta0
        self.sage_eps = sage_eps
        self.check_finite = check_finite
        self.sage_params = self._chosen(params)
        check_parameters(self.sage_params, *SAGE_COMPLEX_REFUSAL)
        self._decay_coefficients()  # refuses weight decay it cannot keep unmodulated
        super().__setstate__({"state": defaultdict(dict)})

    @property
    def param_groups(self) -> List[dict]:
        return self.optimizer.param_groups

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    @property
    def supports_memory_efficient_fp16(self) -> bool:
        return getattr(self.optimizer, "supports_memory_efficient_fp16", False)

    @property
    def supports_flat_params(self) -> bool:
        return getattr(self.optimizer, "supports_flat_params", False)

    @property
    def sage_param_groups(self) -> List[dict]:
        """The SAGE parameters as one group with ``sage``, ``beta0`` and ``sage_eps``, as
        :func:`fairseq_sage.optim.diagnostics.sage_statistics` reads them with :attr:`state`."""
        return [{"params": self.sage_params, "sage": True, "beta0": self.beta0, "sage_eps": self.sage_eps}]

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the base optimizer; its parameters get SAGE. Refused (ValueError, nothing
        added) for complex parameters and for a weight decay SAGE cannot keep unmodulated."""
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif not isinstance(params, set):  # the base refuses a set; a generator is read once, here
            params = list(params)
        group = dict(param_group, params=params)
        check_parameters(params, *SAGE_COMPLEX_REFUSAL)
        self._decay_coefficient(dict(self.defaults, **group))  # as the base will fill the group in
        self.optimizer.add_param_group(group)
        self.sage_params.extend(self.param_groups[-1]["params"])

    def __getstate__(self) -> dict:
        """What pickle and ``copy.deepcopy`` carry (torch's ``__setstate__`` re-creates the hooks)."""
        return {key: self.__dict__[key] for key in PICKLED}

    def __repr__(self) -> str:
        return f"SAGE({self.optimizer!r}, beta0={self.beta0}, sage_eps={self.sage_eps}, impl={self.impl!r})"

    def _all_params(self) -> List[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _chosen(self, params: Optional[Iterable[Tensor]]) -> List[Tensor]:
        everything = self._all_params()
        if params is None:
            return everything
        chosen = list(params)
        known = {id(p) for p in everything}
        if not chosen or not all(id(p) in known for p in chosen):
            raise ValueError("SAGE's params must be a non-empty selection of the wrapped optimizer's parameters")
        return chosen

    def _decay_coefficients(self) -> Dict[int, Callable[[dict], float]]:
        """For each group holding SAGE parameters, by index: param_state -> c of that group
        (:meth:`_decay_coefficient`)."""
        sage = {id(p) for p in self.sage_params}
        return {index: self._decay_coefficient(group) for index, group in enumerate(self.param_groups)
                if any(id(p) in sage for p in group["params"])}

    def _decay_coefficient(self, group: dict) -> Callable[[dict], float]:
        """param_state -> the c of ``group``'s weight decay (module doc); ValueError where the
        group's weight decay cannot be kept out of the modulation."""
        rule = decay_rule(self.optimizer)
        name = type(self.optimizer).__name__
        if rule is None:
            if group.get("weight_decay", 0.0) != 0.0:
                raise ValueError(
                    f"SAGE does not know whether {name} decays weights in its update; set its "
                    "weight_decay to 0 for the SAGE parameters (and decay them yourself), or "
                    "describe it with fairseq_sage.optim.wrapper.register_decay_rule")
            return lambda state: 0.0
        problem = rule.unsupported(group)
        if problem:
            raise ValueError(f"SAGE cannot wrap {name} here: {problem}")
        return lambda state: rule.coefficient(self.optimizer, group, state)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """Evaluate ``closure`` (once), then take the base step and scale it by SAGE (class doc)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if any(p.grad is not None and p.grad.is_sparse for p in self.sage_params):
            raise RuntimeError("SAGE does not support sparse gradients on the parameters it modulates; leave "
                               "those out of SAGE's params= (they then get the base optimizer's plain update)")
        grads = [finiteness_view(p.grad) for p in self._all_params() if p.grad is not None]
        if self.check_finite and not all_finite(grads):
            warnings.warn("SAGE: a gradient holds NaN or inf; update skipped, weights and optimizer "
                          "state left unchanged", RuntimeWarning)
            return loss
        coefficients = self._decay_coefficients()
        old = {p: p.detach().clone() for p in self.sage_params if p.grad is not None}
        self.optimizer.step()
        modulated = []
        for index, group in enumerate(self.param_groups):
            for param in group["params"]:
                if param in old:
                    c = coefficients[index](self.optimizer.state.get(param, {}))
                    state = self._advance(param)
                    modulated.append(_Modulated(param, old.pop(param), param.grad, state["sensitivity_ema"],
                                                state["step"], c))
        for batch in batches(_slices(self._modulate_fused(modulated))):
            self._modulate(batch)
        return loss

    def _modulate_fused(self, pieces: List[_Modulated]) -> List[_Modulated]:
        """Modulate with the fused kernel the ``pieces`` it takes (module doc), one call per dtype;
        return the others."""
        if self.impl == "foreach" or not any(p.param.device.type == "cpu" for p in pieces):
            return pieces
        if cpp_kernel_error():  # impl "auto": "cpp" was checked in __init__
            fall_back("cpp", "cpu", cpp_kernel_error())
            return pieces
        by_dtype: Dict[torch.dtype, List[_Modulated]] = defaultdict(list)
        rest = []
        for piece in pieces:
            fusable = fused_cpu.modulable(piece.param, piece.old, piece.grad, piece.ema)
            (by_dtype[piece.param.dtype] if fusable else rest).append(piece)
        for group in by_dtype.values():
            fused_cpu.modulate_([p.param for p in group], [p.old for p in group], [p.grad for p in group],
                                [p.ema for p in group], [bias_correction(self.beta0, p.step) for p in group],
                                [p.decay for p in group], self.beta0, self.sage_eps)
        return rest

    def _advance(self, param: Tensor) -> dict:
        """The SAGE state of ``param`` with t advanced by one (Ī created, as zeros, at its first update)."""
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["sensitivity_ema"] = torch.zeros_like(param, dtype=working_dtype(param.dtype),
                                                        memory_format=torch.contiguous_format)
        state["step"] += 1
        return state

    def _modulate(self, batch: List["_Modulated"]) -> None:
        """θ ← (1 − c)·θ_old + m ⊙ (θ_new − (1 − c)·θ_old) for every (piece of a) parameter of
        ``batch``, advancing Ī (module doc), with foreach ops over the whole batch."""
        olds = [in_working_dtype(m.old) for m in batch]
        grads = [in_working_dtype(m.grad) for m in batch]
        news = [in_working_dtype(m.param) for m in batch]
        corrections = [bias_correction(self.beta0, m.step) for m in batch]
        emas = [m.ema for m in batch]
        multipliers = sage_multiplier_foreach_(emas, olds, grads, self.beta0, corrections, self.sage_eps)
        if any(m.decay for m in batch):
            torch._foreach_mul_(olds, [1 - m.decay for m in batch])
        torch._foreach_sub_(news, olds)
        torch._foreach_mul_(news, multipliers)
        torch._foreach_add_(news, olds)
        for piece, new in zip(batch, news):
            if new is not piece.param:
                piece.param.copy_(new)

    def state_dict(self) -> dict:
        """The base optimizer's state dict with Ī, t (``sensitivity_ema``, ``sage_step``) and
        ``"sage"`` (β0, ε, SAGE parameter indices) added."""
        state_dict = self.optimizer.state_dict()
        index = {id(p): i for i, p in enumerate(self._all_params())}
        state = dict(state_dict["state"])
        for param, sage_state in self.state.items():
            i = index[id(param)]
            state[i] = dict(state.get(i, {}), sensitivity_ema=sage_state["sensitivity_ema"],
                            sage_step=sage_state["step"])
        sage = {"beta0": self.beta0, "sage_eps": self.sage_eps,
                "params": sorted(index[id(p)] for p in self.sage_params)}
        return dict(state_dict, state=state, sage=sage)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict`: the base's part into the base optimizer, Ī (in
        :func:`.validation.working_dtype`) and t here. The SAGE part is checked before anything is loaded: a
        state dict that does not fit (ValueError, also the base's own) leaves everything as it was."""
        sage_state = self._sage_state_of(state_dict)
        base_state = {}
        for i, entry in state_dict["state"].items():
            rest = {k: v for k, v in entry.items() if k not in SAGE_STATE_KEYS}
            if rest:
                base_state[i] = rest
        base = {k: v for k, v in state_dict.items() if k != "sage"}
        self.optimizer.load_state_dict(dict(base, state=base_state))
        self.beta0, self.sage_eps = state_dict["sage"]["beta0"], state_dict["sage"]["sage_eps"]
        self.state = defaultdict(dict, sage_state)

    def _sage_state_of(self, state_dict: dict) -> Dict[Tensor, dict]:
        """The SAGE state (t, Ī) that ``state_dict`` holds for each of this wrapper's parameters;
        ValueError unless its β0, ε, SAGE parameters and Ī's shapes fit this wrapper."""
        if "sage" not in state_dict:
            raise ValueError("this state dict holds no SAGE state (it is not a SAGE wrapper's)")
        sage = state_dict["sage"]
        check_sage_hyperparameters(sage["beta0"], sage["sage_eps"])
        params = self._all_params()
        chosen = sorted({id(p): i for i, p in enumerate(params)}[id(p)] for p in self.sage_params)
        if list(sage["params"]) != chosen:
            raise ValueError(f"the state dict modulates parameters {list(sage['params'])}, this wrapper {chosen}; "
                             "build the wrapper with the params= of the run that saved it")
        sage_state = {}
        for i, entry in state_dict["state"].items():
            if not any(key in entry for key in SAGE_STATE_KEYS):
                continue
            if i not in chosen:
                raise ValueError(f"the state dict holds SAGE state for parameter {i}, not one of its SAGE "
                                 f"parameters {chosen}; it is damaged, load an intact one")
            missing = [key for key in SAGE_STATE_KEYS if key not in entry]
            if missing:
                raise ValueError(f"parameter {i}'s entry of the state dict lacks {missing[0]}; it is damaged, "
                                 "load an intact one")
            param, ema = params[i], entry["sensitivity_ema"]
            if tuple(ema.shape) != tuple(param.shape):
                raise ValueError(f"parameter {i}'s sensitivity_ema has shape {tuple(ema.shape)}, the parameter "
                                 f"{tuple(param.shape)}; load the state dict of a wrapper over the same parameters")
            sage_state[param] = {"step": int(entry["sage_step"]),
                                 "sensitivity_ema": ema.to(param.device, working_dtype(param.dtype), copy=True)}
        return sage_state
