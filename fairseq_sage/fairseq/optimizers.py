"""fairseq's ``--optimizer adam_sage | adamax_sage | sgd_sage | lion_sage``: adapters over the torch classes.

The base optimizers' flags are fairseq's own (``--adam-betas``, ``--adam-eps``, ``--adamax-betas``,
``--adamax-eps``, ``--no-bias-correction``, ``--momentum``, ``--weight-decay``), and
``--lion-betas`` for Lion, which fairseq does not have; SAGE adds
``--sage-beta0``, ``--sage-eps`` and ``--sage-params``. Every ``--log-interval`` updates the
adapters log statistics of the SAGE multipliers (:mod:`fairseq_sage.optim.diagnostics`), unless
``--no-sage-diagnostics``.
"""

import ast
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from ..optim.diagnostics import next_update_number, sage_statistics
from ..optim.implementations import IMPLEMENTATIONS
from ..optim.optimizers import DEFAULT_SAGE_EPS, AdamaxSAGE, AdamSAGE, LionSAGE, SGDSAGE, check_hyperparameters
from .errors import SageFlagError
from .params import sage_param_groups

logger = logging.getLogger(__name__)

SAGE_FLAG_NAMES = {
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "beta0": "--sage-beta0",
    "sage_eps": "--sage-eps",
}


@dataclass
class SageConfig(FairseqDataclass):
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
    sage_impl: ChoiceEnum(IMPLEMENTATIONS) = field(
        default="auto",
        metadata={"help": "how the update is computed: auto (default) picks a fused C++ kernel for "
                  "CPU and a torch.compile'd one for CUDA, falling back to foreach where these "
                  "cannot be built; reference is the per-tensor loop (bit-identical to adam/adamax "
                  "with SAGE off)"},
    )
    lr: List[float] = II("optimization.lr")
    log_interval: Optional[int] = II("common.log_interval")
    update_epoch_batch_itr: bool = II("dataset.update_epoch_batch_itr")


@dataclass
class AdamSageConfig(SageConfig):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for Adam optimizer"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for Adam optimizer"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay"})


@dataclass
class AdamaxSageConfig(SageConfig):
    adamax_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for Adamax optimizer"})
    adamax_eps: float = field(default=1e-8, metadata={"help": "epsilon for Adamax optimizer"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay"})
    no_bias_correction: bool = field(default=False, metadata={"help": "disable bias correction"})


@dataclass
class SgdSageConfig(SageConfig):
    momentum: float = field(default=0.0, metadata={"help": "momentum factor"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay"})


@dataclass
class LionSageConfig(SageConfig):
    lion_betas: Any = field(
        default=(0.9, 0.99),
        metadata={"help": "betas for Lion: beta1 of the update sign(beta1*m + (1-beta1)*g), beta2 of "
                  "the moving average m"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay"})


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


class _FairseqSAGE(FairseqOptimizer):
    """Builds ``optimizer_class`` from the flags, with one group per SAGE switch."""

    optimizer_class: type
    flag_names: Dict[str, str]

    def __init__(self, cfg, params):
        super().__init__(cfg)
        config = self.optimizer_config
        try:
            check_hyperparameters(config, dict(SAGE_FLAG_NAMES, **self.flag_names))
        except ValueError as err:
            raise SageFlagError(f"{err}; change the flag")
        self._optimizer = self.optimizer_class(sage_param_groups(params, cfg.sage_params), **config)
        if not cfg.get("update_epoch_batch_itr", True):
            logger.warning(
                "a run resumed from a checkpoint continues exactly only with "
                "--update-epoch-batch-itr True (without it fairseq groups sentences into batches "
                "with a seed taken from the epoch at which the process started)")

    def step(self, closure=None, scale=1.0, groups=None):
        """Take one update; every ``--log-interval`` updates log SAGE statistics first.

        The statistics (:mod:`fairseq_sage.optim.diagnostics`) see the gradients the update will use:
        ``scale`` is divided out here, as the base class would do it before stepping.
        """
        if scale != 1.0:
            self.multiply_grads(1.0 / scale)
        if self._diagnostics_due():
            local = self._local_optimizer
            for key, value in sage_statistics(local.param_groups, local.state).items():
                metrics.log_scalar(key, value, priority=1000)
        super().step(closure, groups=groups)

    @property
    def _local_optimizer(self):
        """The SAGE optimizer that holds this process's state: under ``--zero-sharding os``, the one
        that fairscale's wrapper steps on this rank's shard of the parameters (the statistics are
        then the shard's), else the optimizer itself."""
        return getattr(self.optimizer, "optim", self.optimizer)

    def _diagnostics_due(self) -> bool:
        interval = self.cfg.get("log_interval")
        if self.cfg.get("no_sage_diagnostics", False) or not interval or interval < 1:
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


@register_optimizer("adam_sage", dataclass=AdamSageConfig)
class FairseqAdamSAGE(_FairseqSAGE):
    """fairseq's ``adam`` (AdamW-style weight decay) with SAGE learning-rate modulation."""

    optimizer_class = AdamSAGE
    flag_names = {"betas": "--adam-betas", "eps": "--adam-eps"}

    @property
    def optimizer_config(self) -> dict:
        return dict(
            self._sage_config(),
            betas=parse_betas(self.cfg.adam_betas, "--adam-betas"),
            eps=self.cfg.adam_eps,
            weight_decay=self.cfg.weight_decay,
        )


@register_optimizer("adamax_sage", dataclass=AdamaxSageConfig)
class FairseqAdamaxSAGE(_FairseqSAGE):
    """fairseq's ``adamax`` with SAGE learning-rate modulation."""

    optimizer_class = AdamaxSAGE
    flag_names = {"betas": "--adamax-betas", "eps": "--adamax-eps"}

    @property
    def optimizer_config(self) -> dict:
        return dict(
            self._sage_config(),
            betas=parse_betas(self.cfg.adamax_betas, "--adamax-betas"),
            eps=self.cfg.adamax_eps,
            weight_decay=self.cfg.weight_decay,
            bias_correction=not self.cfg.no_bias_correction,
        )


@register_optimizer("sgd_sage", dataclass=SgdSageConfig)
class FairseqSGDSAGE(_FairseqSAGE):
    """SGD with momentum (decoupled weight decay) and SAGE learning-rate modulation."""

    optimizer_class = SGDSAGE
    flag_names = {"momentum": "--momentum"}

    @property
    def optimizer_config(self) -> dict:
        return dict(
            self._sage_config(), momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay
        )


@register_optimizer("lion_sage", dataclass=LionSageConfig)
class FairseqLionSAGE(_FairseqSAGE):
    """Lion (Chen et al., 2023; decoupled weight decay) with SAGE learning-rate modulation."""

    optimizer_class = LionSAGE
    flag_names = {"betas": "--lion-betas"}

    @property
    def optimizer_config(self) -> dict:
        return dict(
            self._sage_config(),
            betas=parse_betas(self.cfg.lion_betas, "--lion-betas"),
            weight_decay=self.cfg.weight_decay,
        )
