"""Which implementation of the SAGE update runs, and running it.

- ``reference``: one tensor at a time, :mod:`fairseq_sage.optim.base_steps` and
  :mod:`fairseq_sage.optim.functional` (bit-identical to fairseq's ``adam``/``adamax`` with SAGE off);
- ``foreach``: eager ``torch._foreach_*`` over lists (:mod:`fairseq_sage.optim.multi_tensor`);
- ``cpp``: one fused C++ loop per group, CPU only (:mod:`fairseq_sage.optim.fused_cpu`), for the
  base optimizers the kernel implements (:attr:`fairseq_sage.optim.base_steps.BaseOptimizer.kernel`);
- ``compiled``: the foreach chain fused by ``torch.compile`` (Triton kernels on CUDA);
- ``auto`` (default): ``cpp`` for CPU parameters, ``compiled`` for CUDA ones, ``foreach``
  elsewhere. Where the chosen one cannot be built (no C++ compiler, no Triton) or the kernel does
  not implement the base optimizer, ``auto`` logs one warning and uses ``foreach``; an
  implementation asked for by name raises instead.

All keep the same state (keys, float32, per-tensor ``step``), so a checkpoint saved with one
continues with any other. A tensor that ``cpp`` cannot take (float64, a gradient of another dtype,
a non-contiguous layout) is updated by ``reference``.
"""

import functools
import importlib.util
import logging
from collections import defaultdict
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from . import fused_cpu, multi_tensor
from .base_steps import BaseOptimizer

__all__ = ["CLASS_IMPLEMENTATIONS", "check_implementation", "choose_implementation", "update_"]

logger = logging.getLogger(__name__)

CLASS_IMPLEMENTATIONS = ("auto", "reference", "foreach", "cpp", "compiled")

PREFERRED = {"cpu": "cpp", "cuda": "compiled"}
"""What ``auto`` runs on each device type (``foreach`` on the others)."""

Work = List[Tuple[dict, List[Tensor], List[dict]]]
"""(group, parameters with a gradient, their states with ``step`` advanced) for each group."""

ReferenceUpdate = Callable[[Tensor, dict, dict], None]
"""Updates one parameter the reference way: ``(param, state, group)``."""


def check_implementation(name: str) -> str:
    """``name`` if it is one of ``CLASS_IMPLEMENTATIONS``, else ValueError."""
    if name not in CLASS_IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {', '.join(CLASS_IMPLEMENTATIONS)}, got {name!r}")
    return name


@functools.lru_cache(maxsize=None)
def cpp_kernel_error() -> str:
    """Why the fused CPU kernel cannot be used here ('' if it can); builds it on the first call."""
    try:
        fused_cpu.load_kernel()
    except fused_cpu.KernelUnavailable as err:
        return str(err)
    return ""


_compile_failures: Dict[str, str] = {}
"""Why compiling failed, by device type, in this process."""


def is_compile_error(err: Exception) -> bool:
    """Whether ``torch.compile`` raised ``err`` because it could not trace or compile (which it does
    before running anything)."""
    from torch._dynamo import exc

    return isinstance(err, (exc.TorchDynamoException, exc.FailOnRecompileLimitHit))


def compiler_missing(device_type: str) -> str:
    """Why ``torch.compile`` cannot generate kernels for ``device_type`` ('' if nothing is known)."""
    if device_type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    return _compile_failures.get(device_type, "")


@functools.lru_cache(maxsize=None)
def fall_back(requested: str, device_type: str, reason: str) -> None:
    """Log, once per process and reason, that ``foreach`` replaces ``requested``."""
    logger.warning("fairseq-sage: the %s SAGE update is unavailable for %s tensors (%s); using the "
                   "slower foreach implementation", requested, device_type, reason)


def unavailable_reason(implementation: str, device_type: str, base: BaseOptimizer) -> str:
    """Why ``implementation`` cannot update ``base`` on ``device_type`` here, as far as is known
    ('' if it can)."""
    if implementation == "cpp":
        if base.kernel is None:
            return f"the fused CPU kernel does not implement {base.name}"
        return cpp_kernel_error()
    if implementation == "compiled":
        return compiler_missing(device_type)
    return ""


def choose_implementation(requested: str, device_type: str, base: BaseOptimizer) -> str:
    """The implementation that updates ``base``'s tensors on ``device_type`` when ``requested`` is asked for."""
    if requested == "auto":
        preferred = PREFERRED.get(device_type, "foreach")
        reason = unavailable_reason(preferred, device_type, base)
        if reason:
            fall_back(preferred, device_type, reason)
            return "foreach"
        return preferred
    if requested == "cpp":
        if device_type != "cpu":
            raise ValueError(f"impl='cpp' updates CPU tensors only, not {device_type} ones; "
                             "use impl='compiled' or 'foreach'")
        reason = unavailable_reason(requested, device_type, base)
        if reason:
            raise RuntimeError(f"impl='cpp': {reason}; use impl='foreach'")
    return requested


def update_(base: BaseOptimizer, requested: str, work: Work, reference_update: ReferenceUpdate) -> None:
    """Apply one update of base optimizer ``base`` to every tensor of ``work``."""
    for device, device_work in split_by_device(work).items():
        device_type = device.type
        implementation = choose_implementation(requested, device_type, base)
        if implementation == "compiled":
            try:
                multi_tensor.compiled_update_(base, device_work)
                continue
            except Exception as err:
                if requested != "auto" or not is_compile_error(err):
                    raise
                _compile_failures[device_type] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                fall_back("compiled", device_type, _compile_failures[device_type])
                implementation = "foreach"
        for group, params, states in device_work:
            if implementation == "reference":
                for param, state in zip(params, states):
                    reference_update(param, state, group)
            elif implementation == "foreach":
                multi_tensor.foreach_update_(base, group, params, states)
            else:
                cpp_update_(base, group, params, states, reference_update)


def split_by_device(work: Work) -> Dict[torch.device, Work]:
    """``work`` split by the device of its tensors."""
    by_device: Dict[torch.device, Work] = defaultdict(list)
    for group, params, states in work:
        members: Dict[torch.device, Tuple[list, list]] = defaultdict(lambda: ([], []))
        for param, state in zip(params, states):
            members[param.device][0].append(param)
            members[param.device][1].append(state)
        for device, (device_params, device_states) in members.items():
            by_device[device].append((group, device_params, device_states))
    return by_device


def cpp_update_(
    base: BaseOptimizer,
    group: dict,
    params: Sequence[Tensor],
    states: Sequence[dict],
    reference_update: ReferenceUpdate,
) -> None:
    """The fused kernel for the tensors it supports, one call per dtype; ``reference`` for the rest."""
    by_dtype: Dict[torch.dtype, Tuple[list, list]] = defaultdict(lambda: ([], []))
    for param, state in zip(params, states):
        if fused_cpu.supports(param, state):
            by_dtype[param.dtype][0].append(param)
            by_dtype[param.dtype][1].append(state)
        else:
            reference_update(param, state, group)
    for dtype_params, dtype_states in by_dtype.values():
        fused_cpu.fused_update_(base, group, dtype_params, dtype_states)
