"""The fused CPU implementation: one C++ loop over all elements of a parameter group.

``csrc/fused_cpu.cpp`` is compiled at first use with the C++ compiler torch finds (10–15 s on
2 cores, vectorised for AVX-512/AVX2 where the CPU has them, threaded with torch's OpenMP pool)
and cached in torch's extension directory (``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``) under a name that holds a hash of the source, so later processes
load it in about a second. Where it cannot be
built (no compiler), :func:`load_kernel` raises :class:`KernelUnavailable` and the caller falls
back to :mod:`fairseq_sage.optim.multi_tensor`.

Each element goes through the chain of the reference path (:mod:`fairseq_sage.optim.base_steps`,
:mod:`fairseq_sage.optim.functional`) in float32, in one read and one write of θ, g, the state and Ī;
the results match the reference path to float32 rounding, not bit for bit (the divisions are
gathered into one). The kernel implements the bases of the registry whose
:attr:`~fairseq_sage.optim.base_steps.BaseOptimizer.kernel` names one of its own, with their state
buffers in the registry's order (at most two); it takes the numbers that change every update (each
tensor's size and coefficients, 1 − β0^t, ηλ) from
:func:`fairseq_sage.optim.base_steps.step_scalars`.

:func:`all_finite` is the kernel's check for NaN and infinity: one parallel read of the gradients,
no temporaries, which the torch classes' step makes before the update writes anything.
:func:`modulate_` is ``SAGE(optimizer)``'s step after its base optimizer's
(:mod:`fairseq_sage.optim.wrapper`), in one pass over θ, θ_old, g and Ī, no temporaries.
"""

import functools
import hashlib
import logging
import sys
from pathlib import Path
from typing import List, Sequence

import torch
from torch import Tensor

from .base_steps import BaseOptimizer, group_constants, step_scalars

__all__ = ["KernelUnavailable", "load_kernel", "checkable", "supports", "all_finite", "fused_update_",
           "modulable", "modulate_"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "fused_cpu.cpp"

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class KernelUnavailable(RuntimeError):
    """The C++ kernel could not be built or loaded here."""


def extension_name() -> str:
    """The kernel's name in torch's extension cache; it changes with torch's version (its ABI) and
    with the source, so that checkouts of other versions on one machine keep builds of their own."""
    version = torch.__version__.split("+")[0].replace(".", "_")
    source = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12] if SOURCE.is_file() else "missing"
    return f"fairseq_sage_fused_cpu_torch{version}_{source}"


@functools.lru_cache(maxsize=None)
def load_kernel():
    """The compiled kernel module (built on the first call of the process if not cached)."""
    from torch.utils import cpp_extension

    if not SOURCE.is_file():
        raise KernelUnavailable(f"{SOURCE} is missing from the installed package")
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    logger.info("fairseq-sage: loading the fused CPU kernel of the SAGE update (compiled at its first "
                "use on this machine, which takes some seconds, then cached)")
    try:
        return cpp_extension.load(
            name=extension_name(),
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-fno-math-errno", "-ffp-contract=off", *openmp],
            extra_ldflags=openmp,
            verbose=False,
        )
    except Exception as err:  # no compiler, no ninja, a failed build: all mean "use another path"
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise KernelUnavailable(f"{type(err).__name__}: {lines[-1]}") from err


def checkable(tensor: Tensor) -> bool:
    """Whether the kernel can read ``tensor``: a contiguous CPU tensor of one of ``WEIGHT_DTYPES``."""
    return tensor.device.type == "cpu" and tensor.dtype in WEIGHT_DTYPES and tensor.is_contiguous()


def supports(param: Tensor, state: dict) -> bool:
    """Whether the kernel can update ``param`` (dtype, device, layout of it, its gradient and state)."""
    grad = param.grad
    return (
        checkable(param)
        and grad.dtype == param.dtype
        and grad.is_contiguous()
        and all(
            value.dtype == torch.float32 and value.is_contiguous()
            for value in state.values()
            if isinstance(value, Tensor)
        )
    )


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """True when no element of ``tensors`` (all :func:`checkable`) is an infinity or a NaN."""
    return load_kernel().all_finite(list(tensors))


def fused_update_(base: BaseOptimizer, group: dict, params: Sequence[Tensor], states: Sequence[dict]) -> None:
    """Update ``params`` (one dtype, all :func:`supported <supports>`) of ``group`` in one kernel call.

    ``states`` are their states with ``step`` already advanced to this update.
    """
    if not params:
        return
    constants = group_constants(group)
    state_lists: List[List[Tensor]] = [[s[key] for s in states] for key in base.state_keys(constants)]
    state_lists += [[]] * (2 - len(state_lists))
    scalars = step_scalars(base, group, states)
    load_kernel().fused_step(
        base.kernel,
        list(params),
        [p.grad for p in params],
        *state_lists,
        [s["sensitivity_ema"] for s in states] if constants.sage else [],
        [list(numbers) for numbers in zip(*scalars.coefficients)],
        scalars.corrections,
        scalars.decay,
        [*constants.betas, constants.eps, constants.momentum, constants.beta0, constants.sage_eps],
    )


def modulable(param: Tensor, old: Tensor, grad: Tensor, ema: Tensor) -> bool:
    """Whether :func:`modulate_` can take this parameter: θ, θ_old and g :func:`checkable` of one
    dtype, Ī contiguous float32."""
    return (checkable(param) and all(checkable(t) and t.dtype == param.dtype for t in (old, grad))
            and ema.dtype == torch.float32 and ema.is_contiguous())


def modulate_(params: Sequence[Tensor], olds: Sequence[Tensor], grads: Sequence[Tensor], emas: Sequence[Tensor],
              corrections: Sequence[float], decays: Sequence[float], beta0: float, sage_eps: float) -> None:
    """θ ← (1 − c)·θ_old + m ⊙ (θ_new − (1 − c)·θ_old) for each parameter (θ_new is what ``params``
    hold; one dtype, all :func:`modulable`), advancing Ī, with m = (U + ε)/(Ī_c + ε) from
    I = |θ_old ⊙ g| and Ī_c = Ī/``corrections`` (1 − β0^t, per parameter); c: ``decays``."""
    if params:
        load_kernel().modulate(list(params), list(olds), list(grads), list(emas), list(corrections),
                               list(decays), beta0, sage_eps)
