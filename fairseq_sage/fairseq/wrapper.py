"""``--optimizer sage --sage-base NAME``: SAGE over any optimizer registered in fairseq.

fairseq builds the base optimizer with its own class from ``OPTIMIZER_REGISTRY`` and its own flags
(``--momentum`` for nag, ``--adafactor-eps``, ``--clip-threshold`` ... for adafactor); the plugin
wraps that optimizer's torch optimizer in :class:`fairseq_sage.optim.wrapper.SAGE`. SAGE adds
``--sage-beta0``, ``--sage-eps``, ``--sage-params`` and ``--no-sage-diagnostics``, as for adam_sage,
and ``--sage-impl`` (the wrapper's ``impl``: auto, foreach or cpp).

How the base's flags reach it: ``sage`` is registered without a dataclass, so fairseq parses the
flags :meth:`FairseqSAGE.add_args` declares and hands the optimizer the whole argparse Namespace as
its config. ``add_args`` cannot know the ``--sage-base`` of the command line, so it declares the
flags of every base that can be wrapped, with no default (a flag not given sets nothing); the base
is then built from its own defaults plus the flags given, and a flag that belongs to another base
only is one clear error.

fairseq's own optimizers tell :class:`~fairseq_sage.optim.wrapper.SAGE` how they decay weights
(:func:`register_decay_rules`, which the plugin calls, adds them to
:data:`fairseq_sage.optim.wrapper.DECAY_RULES`): ``adam``, ``adamax`` and ``nag`` decouple it
(θ·(1 − η·λ)), ``adafactor`` too (with its relative step size ρ where it has one, λ·ρ; with
``--scale-parameter`` and a weight decay it is refused); ``sgd`` and ``adagrad`` add λ·θ
to the gradient. ``--zero-sharding os`` rebuilds the optimizer from its class and is refused.

The optimizer state in a checkpoint records its base (``"sage"``'s ``base``): a run resumed with
another ``--sage-base`` stops with one line naming ``--reset-optimizer``, rather than failing at its
first update on state the new base does not read.
"""

import argparse
import copy
import importlib.util
import inspect
from typing import List, Optional

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY, OPTIMIZER_REGISTRY, build_optimizer, register_optimizer
from fairseq.optim.adafactor import Adafactor
from fairseq.optim.adam import Adam
from fairseq.optim.adamax import Adamax
from fairseq.optim.nag import NAG
from omegaconf import OmegaConf
import torch

from ..optim.implementations import cpp_kernel_error
from ..optim.wrapper import (
    WRAPPER_IMPLEMENTATIONS, SAGE, SAGE_STATE_KEYS, DecayRule, check_sage_hyperparameters, decoupled, register_decay_rule,
)
from .errors import SageFlagError
from .optimizers import (
    NOT_RESUMED, RESET_HINT, SAGE_FLAG_NAMES, SageModulationConfig, SageAdapterBase, config_value, log_changes,
)
from .params import sage_param_groups

__all__ = ["FairseqSAGE", "register_decay_rules", "wrappable_bases"]

NOT_WRAPPABLE = {"composite": "steps one optimizer per parameter group; wrap one of them instead"}
OPTIONAL_DEPENDENCIES = {"cpu_adam": "deepspeed", "lamb": "apex"}
"""fairseq optimizers that need a package fairseq does not require, by name."""


def adafactor_decay(optimizer: Adafactor, group: dict, param_state: dict) -> float:
    """fairseq's Adafactor decays θ by λ·ρ, ρ its step size, which ``_get_lr`` recomputes from the
    parameter's state after the step (the step count and RMS(θ_old) it used)."""
    return group["weight_decay"] * optimizer._get_lr(group, param_state)


def adafactor_unsupported(group: dict) -> Optional[str]:
    """With --scale-parameter and no --relative-step, fairseq's Adafactor multiplies the group's
    lr by each parameter's RMS in turn, so the decay of one parameter depends on all before it."""
    if group["weight_decay"] and group["scale_parameter"] and not group["relative_step"]:
        return ("with --scale-parameter its weight decay cannot be separated from its update "
                "(fairseq-train cannot add --relative-step); drop --scale-parameter or set --weight-decay 0")
    return None


def register_decay_rules() -> None:
    """Add fairseq's optimizers to :data:`fairseq_sage.optim.wrapper.DECAY_RULES` (module doc); the
    plugin calls it when fairseq loads the plugin, as SAGE looks the rules up by class."""
    for decoupled_class in (Adam, Adamax, NAG):
        register_decay_rule(decoupled_class, DecayRule(decoupled))
    register_decay_rule(Adafactor, DecayRule(adafactor_decay, adafactor_unsupported))


def why_not_wrappable(name: Optional[str]) -> Optional[str]:
    """Why ``--sage-base name`` cannot work, or None where it can."""
    if name not in OPTIMIZER_REGISTRY:
        return f"--sage-base {name!r} is not an optimizer registered in fairseq"
    if issubclass(OPTIMIZER_REGISTRY[name], SageAdapterBase):
        return f"--sage-base {name} applies SAGE itself"
    if name in NOT_WRAPPABLE:
        return f"--sage-base {name} cannot be wrapped: it {NOT_WRAPPABLE[name]}"
    dependency = OPTIONAL_DEPENDENCIES.get(name)
    if dependency and importlib.util.find_spec(dependency) is None:
        return f"--sage-base {name} needs {dependency}, which is not installed"
    return None


def wrappable_bases() -> List[str]:
    """The names ``--sage-base`` accepts: fairseq's optimizers, less those :func:`why_not_wrappable`."""
    return sorted(name for name in OPTIMIZER_REGISTRY if why_not_wrappable(name) is None)


class _Undefaulted:
    """Stands in for the parser in a base's ``add_args``: each flag goes to ``parser`` with no
    default (argparse.SUPPRESS), an option string another base already defined is skipped, and
    the destinations are collected in ``dests``."""

    def __init__(self, parser):
        self.parser = parser
        self.dests = set()

    def add_argument(self, *names, **kwargs):
        dest = kwargs.pop("dest", None) or next(n for n in names if n.startswith("--"))[2:].replace("-", "_")
        kwargs["default"] = argparse.SUPPRESS
        self.dests.add(dest)
        for name in names:
            try:
                self.parser.add_argument(name, dest=dest, **kwargs)
            except argparse.ArgumentError:  # the same flag of another base
                pass


def base_flags(name: str, parser) -> set:
    """Add the flags of fairseq's optimizer ``name`` to ``parser`` (no defaults); their dests."""
    flags = _Undefaulted(parser)
    OPTIMIZER_REGISTRY[name].add_args(flags)
    return flags.dests


def base_config(cfg: argparse.Namespace, name: str):
    """The config fairseq's optimizer ``name`` is built from: its own defaults, the flags given;
    a DictConfig of its dataclass where it has one, else an argparse Namespace.

    A flag given that only other bases have is refused (SageFlagError).
    """
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    OPTIMIZER_REGISTRY[name].add_args(own)
    defaults = own.parse_args([])
    scratch = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    foreign = set().union(*(base_flags(b, scratch) for b in wrappable_bases())) - set(vars(defaults))
    given = sorted(dest for dest in foreign if hasattr(cfg, dest))
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise SageFlagError(f"{flag} is not a flag of --sage-base {name}; drop it or choose the base it belongs to")
    config = argparse.Namespace(**dict(vars(defaults), **vars(cfg)))
    config.optimizer = name
    if name not in OPTIMIZER_DATACLASS_REGISTRY:
        return config
    structured = OPTIMIZER_DATACLASS_REGISTRY[name].from_namespace(config)
    structured._name = name
    return OmegaConf.structured(structured)  # as fairseq hands it over (betas as a list, say)


def constructor_arguments(cls: type, defaults: dict) -> dict:
    """The entries of an optimizer's ``defaults`` that its class's constructor takes (torch may add
    others, such as ``differentiable``, that fairseq's own optimizer classes do not accept)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(defaults)
    return {key: value for key, value in defaults.items() if key in parameters}


def foreign_state_error(base: torch.optim.Optimizer, groups: List[dict], state_dict: dict,
                        settings: dict) -> Optional[str]:
    """What goes wrong when ``base``'s class steps once on a copy of the saved state (group and
    per-weight entry, SAGE's own keys left out) of the smallest weight that has one, with this
    run's ``settings`` applied as a resumed run applies them; None where the step runs or where
    the class cannot be probed so.

    A state written by another optimizer lacks what this one reads (Adam's ``exp_avg_sq`` for
    Adamax's ``exp_inf``, SGD's ``dampening`` in NAG's group) and fails as a KeyError.
    """
    params = [p for group in groups for p in group["params"]]
    entries = {i: {k: v for k, v in entry.items() if k not in SAGE_STATE_KEYS}
               for i, entry in state_dict["state"].items()}
    entries = {i: entry for i, entry in entries.items() if entry and i < len(params)}
    if not entries or not state_dict["param_groups"]:
        return None
    index = min(entries, key=lambda i: params[i].numel())
    weight = torch.zeros_like(params[index], requires_grad=True)
    weight.grad = torch.zeros_like(weight)
    owner = next((g for g in state_dict["param_groups"] if index in g["params"]), state_dict["param_groups"][0])
    group = dict({k: v for k, v in owner.items() if k != "params"}, **settings, params=[0])
    try:
        probe = type(base)([weight], **constructor_arguments(type(base), base.defaults))
        probe.load_state_dict({"state": {0: copy.deepcopy(entries[index])}, "param_groups": [group]})
        probe.step()
    except KeyError as err:
        return f"KeyError {err}"
    except (TypeError, ValueError, RuntimeError):
        pass  # a probe this class cannot take: the real step decides
    return None


@register_optimizer("sage")
class FairseqSAGE(SageAdapterBase):
    """SAGE (:class:`fairseq_sage.optim.wrapper.SAGE`) over the torch optimizer of ``--sage-base``."""

    @staticmethod
    def add_args(parser):
        gen_parser_from_dataclass(parser, SageModulationConfig())
        parser.add_argument("--sage-base", metavar="NAME",
                            help="the fairseq optimizer SAGE modulates: " + ", ".join(wrappable_bases()))
        parser.add_argument("--sage-impl", choices=WRAPPER_IMPLEMENTATIONS, default="auto",
                            help="how the modulation is computed: auto (default) the fused C++ kernel "
                            "for CPU tensors it can take, foreach elsewhere; foreach; cpp (an error "
                            "where the kernel cannot be built)")
        for name in wrappable_bases():
            base_flags(name, parser)

    @property
    def optimizer_config(self) -> dict:
        return self.base.optimizer_config

    @property
    def base_name(self) -> Optional[str]:
        """The ``--sage-base`` this optimizer wraps."""
        return config_value(self.cfg, "sage_base", None)

    def state_dict(self) -> dict:
        """The wrapper's state dict with the base's name recorded in its ``"sage"`` entry, so that a
        resumed run can tell another base's state from its own."""
        state_dict = self.optimizer.state_dict()
        return dict(state_dict, sage=dict(state_dict["sage"], base=self.base_name))

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """Load the wrapper's state (the base's, Ī and t; by position, as fairseq loads its own
        optimizers'), then let this run's flags rule: the base's hyper-parameters and
        ``--sage-beta0``/``--sage-eps`` replace the checkpoint's, each change logged;
        ``--optimizer-overrides`` applies last. A state another base wrote stops the run with one
        line (:meth:`_check_same_base`)."""
        settings = {k: v for k, v in self.optimizer_config.items() if k not in NOT_RESUMED}
        self._check_same_base(state_dict, settings)
        try:
            self.optimizer.load_state_dict(state_dict)
        except ValueError as err:
            raise SageFlagError(f"cannot resume from the checkpoint's optimizer state: {err}; {RESET_HINT}") from None
        sage = {"beta0": self.cfg.sage_beta0, "sage_eps": self.cfg.sage_eps}
        log_changes(state_dict["sage"], sage, SAGE_FLAG_NAMES)
        self.optimizer.beta0, self.optimizer.sage_eps = sage["beta0"], sage["sage_eps"]
        saved = state_dict["param_groups"][0] if state_dict["param_groups"] else {}
        log_changes(saved, settings, {})
        for group in self.optimizer.param_groups:
            group.update(settings)
            group.update(optimizer_overrides or {})

    def _check_same_base(self, state_dict: dict, settings: dict) -> None:
        """Stop with one line where the checkpoint's optimizer state belongs to another base (whose
        state the base would meet only at its first step, as a KeyError): by the base recorded in
        the state, or, in a state that records none, by one step of this base on a copy of the
        smallest weight's saved state (:func:`foreign_state_error`)."""
        name = self.base_name
        saved = state_dict.get("sage", {}).get("base")
        if saved is not None and saved != name:
            raise SageFlagError(
                f"resumed with --sage-base {name} but the checkpoint's optimizer state is {saved}'s: pass "
                f"--reset-optimizer to start the optimizer afresh (or resume with --sage-base {saved})")
        if saved is None:
            error = foreign_state_error(self.optimizer.optimizer, self.optimizer.param_groups, state_dict, settings)
            if error is not None:
                raise SageFlagError(
                    f"resumed with --sage-base {name} but the checkpoint's optimizer state is another "
                    f"base's ({name}'s step fails on it: {error}): pass --reset-optimizer to start the "
                    f"optimizer afresh (or resume with the --sage-base of the checkpoint's run)")

    def _build_optimizer(self, params) -> SAGE:
        name = self.base_name
        problem = "--optimizer sage needs --sage-base NAME" if name is None else why_not_wrappable(name)
        if problem:
            raise SageFlagError(f"{problem}; valid names: {', '.join(wrappable_bases())}")
        if config_value(self.cfg, "zero_sharding", "none") == "os":
            raise SageFlagError("--optimizer sage does not support --zero-sharding os (fairscale rebuilds "
                                "the optimizer from its class); use adam_sage, adamax_sage or sgd_sage")
        try:
            check_sage_hyperparameters(self.cfg.sage_beta0, self.cfg.sage_eps, SAGE_FLAG_NAMES)
        except ValueError as err:
            raise SageFlagError(f"{err}; change the flag")
        params = list(params)
        groups = sage_param_groups(params, self.cfg.sage_params)
        try:
            self.base = build_optimizer(base_config(self.cfg, name), params)
        except (ImportError, ValueError) as err:
            raise SageFlagError(f"--sage-base {name} cannot be built: {err}")
        try:
            return SAGE(self.base.optimizer, self.cfg.sage_beta0, self.cfg.sage_eps, params=groups[0]["params"],
                        check_finite=False, impl=config_value(self.cfg, "sage_impl", "auto"))
        except RuntimeError:  # impl "cpp" where the kernel cannot be built
            raise SageFlagError(f"--sage-impl cpp: {cpp_kernel_error()}; use --sage-impl auto or foreach") from None
        except ValueError as err:
            raise SageFlagError(f"--sage-base {name}: {err}")
