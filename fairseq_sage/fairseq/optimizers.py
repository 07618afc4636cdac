"""fairseq's ``--optimizer adam_sage | adamax_sage | sgd_sage | lion_sage | nadam_sage``: adapters
over the torch classes.

Each torch class of :data:`fairseq_sage.optim.optimizers.SAGE_OPTIMIZERS` gets its adapter,
``--optimizer NAME_sage``, made by :func:`register_adapter` from its registry entry: one flag per
hyper-parameter, named as the entry declares it. The base optimizers' flags are fairseq's own
(``--adam-betas``, ``--adam-eps``, ``--adamax-betas``, ``--adamax-eps``, ``--no-bias-correction``,
``--momentum``, ``--weight-decay``), and ``--lion-betas``, ``--nadam-betas``, ``--nadam-eps``,
``--momentum-decay`` for Lion and NAdam, which fairseq does not have; SAGE adds
``--sage-beta0``, ``--sage-eps`` and ``--sage-params``. Every ``--log-interval`` updates the
adapters log statistics of the SAGE multipliers (:mod:`fairseq_sage.optim.diagnostics`), unless
``--no-sage-diagnostics``.

A resumed run (:meth:`SageAdapterBase.load_state_dict`) runs with the hyper-parameters of its command
line, as fairseq does for ``--lr``, and logs each one that differs from the checkpoint's optimizer
state (``sage_beta0 0.8 -> 0.3``); each weight's state moves with its name, also when
``--sage-params`` chooses other weights than the checkpoint's run did.
"""

import ast
import dataclasses
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from ..optim.diagnostics import next_update_number, sage_statistics
from ..optim.implementations import CLASS_IMPLEMENTATIONS
from ..optim.named_state import align_by_name, group_names
from ..optim.hyperparameters import HyperParameter
from ..optim.hyperparameters import DEFAULT_SAGE_EPS
from ..optim.optimizers import SAGE_OPTIMIZERS
from ..optim.validation import check_hyperparameters
from .errors import SageFlagError
from .params import sage_param_groups

logger = logging.getLogger(__name__)

SAGE_FLAG_NAMES = {
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "beta0": "--sage-beta0",
    "sage_eps": "--sage-eps",
}

NOT_RESUMED = ("lr", "impl", "check_finite")
"""Settings of ``optimizer_config`` that a resumed run does not write into the loaded groups: the
lr scheduler sets ``lr`` at every update, the others are not group values."""

RESET_HINT = "resume with --reset-optimizer (the weights are kept, the optimizer state starts afresh)"


@dataclass
class SageModulationConfig(FairseqDataclass):
    """The flags of the SAGE modulation itself, shared by every SAGE optimizer and ``--optimizer sage``."""

    sage_beta0: float = field(
        default=0.8,
        metadata={"help": "beta0 of the sensitivity moving average (the paper: 0.8 on IWSLT'14, "
                  "0.4 on WMT'16)"},
    )
    sage_eps: float = field(
        default=DEFAULT_SAGE_EPS,
        metadata={"help": "epsilon of the SAGE lr multiplier (U + eps)/(I + eps)"},
    )
    sage_params: Optional[str] = field(
        default=None,
        metadata={"help": "regular expression (re.search on parameter names, e.g. "
                  "'encoder.layers|decoder.layers'): only matching parameters get SAGE, the rest "
                  "the plain base step; default: all parameters"},
    )
    no_sage_diagnostics: bool = field(
        default=False,
        metadata={"help": "do not log statistics of the SAGE lr multipliers (sage_mult_mean, "
                  "sage_mult_p50, ...) every --log-interval updates"},
    )
    lr: List[float] = II("optimization.lr")
    log_interval: Optional[int] = II("common.log_interval")
    update_epoch_batch_itr: bool = II("dataset.update_epoch_batch_itr")


@dataclass
class SageConfig(SageModulationConfig):
    sage_impl: ChoiceEnum(CLASS_IMPLEMENTATIONS) = field(
        default="auto",
        metadata={"help": "how the update is computed: auto (default) picks a fused C++ kernel for "
                  "CPU and a torch.compile'd one for CUDA, falling back to foreach where these "
                  "cannot be built; reference is the per-tensor loop (bit-identical to adam/adamax "
                  "with SAGE off)"},
    )

def config_value(cfg, key: str, default: Any) -> Any:
    """``cfg.key`` or ``default``, for a fairseq config or the argparse.Namespace of an optimizer
    registered without a dataclass (``--optimizer sage``)."""
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _sage_names(groups: List[dict]) -> Optional[set]:
    """The names of the parameters of ``groups`` that get SAGE (None if the groups name none)."""
    names = group_names(groups)
    if names is None:
        return None
    return {name for group, in_group in zip(groups, names) if group["sage"] for name in in_group}


def _shown(value: Any) -> str:
    """A hyper-parameter as the log shows it: ``(0.9, 0.98)``, ``0.8``."""
    return str(tuple(value)) if isinstance(value, (list, tuple)) else str(value)


def log_changes(saved: dict, settings: dict, flags: Dict[str, str]) -> None:
    """Log each of ``settings`` (this run's) that differs from the ``saved`` one of a resumed
    checkpoint: ``fairseq-sage: resumed with sage_beta0 0.8 -> 0.3 (the command line's value)``."""
    for key, value in settings.items():
        if key in saved and _shown(saved[key]) != _shown(value):
            name = flags.get(key, f"--{key}")[2:].replace("-", "_")
            logger.info("fairseq-sage: resumed with %s %s -> %s (the command line's value)",
                        name, _shown(saved[key]), _shown(value))


def parse_betas(value: Any, flag: str) -> tuple:
    """fairseq's betas flag, a string like '(0.9, 0.98)' or a list, as a pair of floats."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    try:
        betas = tuple(float(b) for b in (ast.literal_eval(value) if isinstance(value, str) else value))
    except (ValueError, TypeError, SyntaxError):
        betas = ()
    if len(betas) != 2:
        raise SageFlagError(f"{flag} must be a pair like '(0.9, 0.98)', got {value!r}")
    return betas


class SageAdapterBase(FairseqOptimizer):
    """What every SAGE adapter (``--optimizer NAME_sage``, ``--optimizer sage``) shares: builds
    ``optimizer_class`` from the flags, with one group per SAGE switch."""

    optimizer_class: type
    flag_names: Dict[str, str]

    def __init__(self, cfg, params):
        super().__init__(cfg)
        self._optimizer = self._build_optimizer(params)
        if not config_value(cfg, "update_epoch_batch_itr", True):
            logger.warning(
                "a run resumed from a checkpoint continues exactly only with "
                "--update-epoch-batch-itr True (without it fairseq groups sentences into batches "
                "with a seed taken from the epoch at which the process started)")

    def _build_optimizer(self, params):
        """The torch optimizer: ``optimizer_class`` with the flags' values, one group per SAGE switch."""
        config = self.optimizer_config
        try:
            check_hyperparameters(config, self._flags)
        except ValueError as err:
            raise SageFlagError(f"{err}; change the flag")
        return self.optimizer_class(sage_param_groups(params, self.cfg.sage_params), **config)

    def __getstate__(self) -> dict:
        """The whole adapter, for ``copy.deepcopy`` (fairseq's ``FairseqOptimizer`` returns its torch
        optimizer's state only, whose copy has no ``optimizer`` to step). ``pickle`` still fails on
        fairseq's configuration, whose ``ChoiceEnum`` classes are made at run time."""
        return dict(self.__dict__)

    @property
    def _flags(self) -> Dict[str, str]:
        """Group keyword -> the flag that sets it (``beta0`` -> ``--sage-beta0``)."""
        return dict(SAGE_FLAG_NAMES, **self.flag_names)

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """Load a checkpoint's optimizer state, keeping this run's hyper-parameters.

        - Each weight's state moves with its name (the groups name their parameters; see
          :func:`~fairseq_sage.optim.named_state.align_by_name`): a weight that this run's ``--sage-params``
          gives SAGE and the checkpoint's did not starts with Ī = 0, one it does not give SAGE
          drops its Ī. A checkpoint whose state names no parameters is loaded by position, which
          needs groups of the same sizes.
        - The hyper-parameters of the command line replace the checkpoint's (``--lr`` is the lr
          scheduler's, as in fairseq); each one that changed is logged, so that the new
          checkpoint's configuration is what ran. ``--optimizer-overrides`` applies last.
        """
        groups = self.optimizer.param_groups
        try:
            self.optimizer.load_state_dict(align_by_name(state_dict, groups))
        except ValueError as err:
            raise SageFlagError(f"cannot resume from the checkpoint's optimizer state: "
                                f"{self._mismatch(err, state_dict, groups)}") from None
        self._log_regrouping(state_dict["param_groups"])
        settings = {k: v for k, v in self.optimizer_config.items() if k not in NOT_RESUMED}
        saved = state_dict["param_groups"][0] if state_dict["param_groups"] else {}
        log_changes(saved, settings, self._flags)
        for group in self._all_groups():
            group.update(settings)
            group.update(optimizer_overrides or {})
            try:
                check_hyperparameters(group, self._flags)
            except ValueError as err:
                raise SageFlagError(f"--optimizer-overrides {optimizer_overrides!r}: {err}") from None
        self._local_optimizer.complete_state()

    def _all_groups(self) -> List[dict]:
        """The groups that hold hyper-parameters: the optimizer's and, under ``--zero-sharding os``,
        also those of the optimizer of this rank's shard."""
        local = self._local_optimizer
        return list(self.optimizer.param_groups) + (list(local.param_groups) if local is not self.optimizer else [])

    def _mismatch(self, err: ValueError, state_dict: dict, groups: List[dict]) -> str:
        """Why ``state_dict`` does not fit ``groups``, and the fix, for the one-line error."""
        if group_names(state_dict["param_groups"]) is not None:
            return f"{err}; {RESET_HINT}"
        sizes = [len(g["params"]) for g in state_dict["param_groups"]]
        return (f"it names no parameters (an older fairseq-sage wrote it) and its groups hold {sizes} "
                f"parameters, this run's (--sage-params {self.cfg.sage_params!r}) "
                f"{[len(g['params']) for g in groups]}; resume with the --sage-params of the "
                f"checkpoint's run, or {RESET_HINT}")

    def _log_regrouping(self, saved_groups: List[dict]) -> None:
        """Log how many weights gain or lose SAGE because this run's ``--sage-params`` chooses
        other weights than the checkpoint's."""
        before, after = _sage_names(saved_groups), _sage_names(self.optimizer.param_groups)
        if before is not None and after is not None and before != after:
            logger.info("fairseq-sage: --sage-params chooses other weights than the checkpoint's run: "
                        "%d gain SAGE (their Ī starts at 0), %d lose it (their Ī is dropped); the "
                        "other state of every weight moves with its name", len(after - before),
                        len(before - after))

    def step(self, closure=None, scale=1.0, groups=None):
        """Take one update; every ``--log-interval`` updates log SAGE statistics first.

        The statistics (:mod:`fairseq_sage.optim.diagnostics`) see the gradients the update will use:
        ``scale`` is divided out here, as the base class would do it before stepping.
        """
        if scale != 1.0:
            self.multiply_grads(1.0 / scale)
        if self._diagnostics_due():
            local = self._local_optimizer
            for key, value in sage_statistics(local.sage_param_groups, local.state).items():
                metrics.log_scalar(key, value, priority=1000)
        super().step(closure, groups=groups)

    @property
    def _local_optimizer(self):
        """The SAGE optimizer that holds this process's state: under ``--zero-sharding os``, the one
        that fairscale's wrapper steps on this rank's shard of the parameters (the statistics are
        then the shard's), else the optimizer itself."""
        return getattr(self.optimizer, "optim", self.optimizer)

    def _diagnostics_due(self) -> bool:
        interval = config_value(self.cfg, "log_interval", None)
        if config_value(self.cfg, "no_sage_diagnostics", False) or not interval or interval < 1:
            return False
        local = self._local_optimizer
        return next_update_number(local.param_groups, local.state) % interval == 0

    def _sage_config(self) -> dict:
        lr = self.cfg.lr
        return {
            "lr": lr[0] if isinstance(lr, Collection) else lr,
            "beta0": self.cfg.sage_beta0,
            "sage_eps": self.cfg.sage_eps,
            "impl": str(self.cfg.get("sage_impl", "auto")),
            # fairseq's trainer never steps on a NaN/inf gradient norm: no second check
            "check_finite": False,
        }


def flag_field(entry: HyperParameter) -> str:
    """The config field of ``entry``'s flag (``--adam-betas`` -> ``adam_betas``)."""
    return entry.flag[2:].replace("-", "_")


def negated(entry: HyperParameter) -> bool:
    """Whether ``entry`` is a switch that its ``--no-...`` flag turns off."""
    return entry.bound == "switch" and entry.flag.startswith("--no-")


def config_field(entry: HyperParameter) -> Tuple[str, type, Any]:
    """The fairseq dataclass field of ``entry``'s flag: (name, type, field)."""
    if negated(entry):
        kind, default = bool, not entry.default
    else:
        kind, default = {"unit pair": Any, "switch": bool}.get(entry.bound, float), entry.default
    return flag_field(entry), kind, field(default=default, metadata={"help": entry.help})


def flag_value(cfg, entry: HyperParameter) -> Any:
    """The value of ``entry`` that the flags of ``cfg`` set."""
    value = getattr(cfg, flag_field(entry))
    if entry.bound == "unit pair":
        return parse_betas(value, entry.flag)
    return not value if negated(entry) else value


class _FairseqBaseSAGE(SageAdapterBase):
    """The adapter of a SAGE torch class: its flags are its registry entry's hyper-parameters
    (``--lr`` is fairseq's own, which the lr scheduler follows)."""

    @classmethod
    def base_entries(cls) -> List[HyperParameter]:
        """The base optimizer's hyper-parameters that this adapter's dataclass holds (all but lr)."""
        return [entry for entry in cls.optimizer_class._base.hyperparameters if entry.name != "lr"]

    @property
    def optimizer_config(self) -> dict:
        values = {entry.name: flag_value(self.cfg, entry) for entry in self.base_entries()}
        return dict(self._sage_config(), **values)


def register_adapter(optimizer_class: type) -> type:
    """Register ``--optimizer NAME_sage`` (NAME: the registry name of ``optimizer_class``'s base)
    with a dataclass of its flags; returns the adapter."""
    base = optimizer_class._base
    name = f"{base.name}_sage"
    adapter = type(f"Fairseq{optimizer_class.__name__}", (_FairseqBaseSAGE,), {
        "__doc__": f"``--optimizer {name}``: :class:`{optimizer_class.__module__}.{optimizer_class.__name__}`.",
        "__module__": __name__,
        "optimizer_class": optimizer_class,
        "flag_names": {entry.name: entry.flag for entry in base.hyperparameters},
    })
    config = dataclasses.make_dataclass(
        f"{base.name.capitalize()}SageConfig", [config_field(entry) for entry in adapter.base_entries()],
        bases=(SageConfig,), namespace={"__module__": __name__},
    )
    adapter.config_class = config
    return register_optimizer(name, dataclass=config)(adapter)


ADAPTERS: Dict[str, type] = {
    f"{optimizer_class._base.name}_sage": register_adapter(optimizer_class)
    for optimizer_class in SAGE_OPTIMIZERS.values()
}
"""``--optimizer`` name -> the fairseq adapter registered under it."""
