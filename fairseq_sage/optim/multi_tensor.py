"""Multi-tensor implementations: the reference chain written with ``torch._foreach_*`` over lists.

The chain is the reference path's (:mod:`fairseq_sage.optim.optimizers`): base step -> SAGE multiplier ->
decoupled weight decay -> apply, in float32 for half-precision parameters. :func:`update_chain_`
writes it once; two implementations run it:

- :func:`foreach_update_`, eager, one group at a time in batches of at most ``CHUNK_ELEMENTS``
  elements (large tensors are cut into views), so that its temporaries (at most four of a batch's
  size) stay a few MB whatever the model size, and in cache. The fallback where nothing compiles;
  on CPU, where foreach operations run tensor by tensor, about as fast as the reference path.
- :func:`compiled_update_`, all groups at once under ``torch.compile(fullgraph=True)``: inductor
  fuses the chain into a few kernels without temporaries (Triton on CUDA, C++/OpenMP on CPU).
  The per-tensor numbers that change every update (step sizes, 1 − β0^t, 1 − ηλ) enter as one
  tensor, so the learning-rate schedule never triggers a recompilation.

Results match the reference path to rounding: the weight decay is θ·(1 − ηλ) instead of
θ − ηλ·θ and the update is (size · num) · m / den instead of size · (m · num) / den.
"""

import functools
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import base_steps
from .functional import sage_multiplier_foreach_

__all__ = ["CHUNK_ELEMENTS", "update_chain_", "foreach_update_", "compiled_update_"]

CHUNK_ELEMENTS = 1 << 18
"""At most this many elements (1 MB per float32 temporary: they stay in cache) per eager foreach batch."""

STATE_KEYS = {"adam": ("exp_avg", "exp_avg_sq"), "adamax": ("exp_avg", "exp_inf"), "sgd": ("momentum_buffer",)}

LOW_PRECISION = (torch.float16, torch.bfloat16)

Scalars = Sequence[Union[float, Tensor]]


class Constants(NamedTuple):
    """A group's hyper-parameters that stay fixed during training (compiled in as constants)."""

    betas: Tuple[float, float]
    eps: float
    momentum: float
    sage: bool
    beta0: float
    sage_eps: float
    decays_weights: bool
    """Whether weight decay is on (its size ηλ follows the learning rate: it is not a constant)."""


def group_constants(group: dict) -> Constants:
    """The fixed hyper-parameters of ``group`` (zeros for those its optimizer does not have)."""
    return Constants(
        tuple(group.get("betas", (0.0, 0.0))), group.get("eps", 0.0), group.get("momentum", 0.0),
        bool(group["sage"]), group["beta0"], group["sage_eps"], group["weight_decay"] != 0,
    )


def base_step_foreach_(
    kind: str, constants: Constants, grads: List[Tensor], states: Dict[str, List[Tensor]]
) -> Tuple[List[Tensor], Optional[List[Tensor]]]:
    """Advance the base optimizer's state; return its numerators and denominators (None for SGD)."""
    if kind == "sgd":
        if constants.momentum == 0:
            return grads, None
        buffers = states["momentum_buffer"]
        torch._foreach_mul_(buffers, constants.momentum)
        torch._foreach_add_(buffers, grads)
        return buffers, None
    beta1, beta2 = constants.betas
    exp_avgs = states["exp_avg"]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    if kind == "adam":
        exp_avg_sqs = states["exp_avg_sq"]
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, constants.eps)
        return exp_avgs, denominators
    exp_infs = states["exp_inf"]
    torch._foreach_mul_(exp_infs, beta2)
    torch._foreach_maximum_(exp_infs, torch._foreach_abs(grads))
    return exp_avgs, torch._foreach_add(exp_infs, constants.eps)


def update_chain_(
    kind: str,
    constants: Constants,
    weights: List[Tensor],
    grads: List[Tensor],
    states: Dict[str, List[Tensor]],
    sizes: Scalars,
    corrections: Scalars,
    keep: Union[float, Tensor],
) -> None:
    """One update of ``weights`` (float32 or wider, as their ``grads`` and ``states``), in place.

    ``sizes`` and ``corrections`` hold each tensor's base-step size and 1 − β0^t, ``keep`` is
    1 − ηλ; all are numbers, or 0-dim tensors under ``torch.compile``.
    """
    numerators, denominators = base_step_foreach_(kind, constants, grads, states)
    updates = torch._foreach_mul(numerators, sizes)
    if constants.sage:
        multipliers = sage_multiplier_foreach_(
            states["sensitivity_ema"], weights, grads, constants.beta0, corrections, constants.sage_eps
        )
        torch._foreach_mul_(updates, multipliers)
    if denominators is not None:
        torch._foreach_div_(updates, denominators)
    if constants.decays_weights:
        torch._foreach_mul_(weights, keep)
    torch._foreach_sub_(weights, updates)


def state_keys(kind: str, constants: Constants) -> Tuple[str, ...]:
    """The state entries the chain reads and writes for ``kind`` with these constants."""
    keys = STATE_KEYS[kind] if kind != "sgd" or constants.momentum != 0 else ()
    return keys + (("sensitivity_ema",) if constants.sage else ())


def step_scalars(kind: str, group: dict, states: Sequence[dict]) -> Tuple[List[float], List[float], float]:
    """Per tensor its base-step size and 1 − β0^t (t = its ``step``), and the group's 1 − ηλ."""
    step_size = base_steps.STEP_SIZES[kind]
    sizes = [step_size(group, s["step"]) for s in states]
    corrections = [1 - group["beta0"] ** s["step"] for s in states]
    return sizes, corrections, 1 - group["lr"] * group["weight_decay"]


class Piece(NamedTuple):
    """A parameter, or a slice of one, with its gradient, state and update count."""

    param: Tensor
    grad: Tensor
    state: Dict[str, Tensor]
    step: int


def pieces(params: Sequence[Tensor], states: Sequence[dict], keys: Sequence[str]) -> Iterator[Piece]:
    """The parameters, contiguous ones larger than ``CHUNK_ELEMENTS`` cut into flat slices."""
    for param, state in zip(params, states):
        tensors = [param, param.grad] + [state[key] for key in keys]
        if param.numel() <= CHUNK_ELEMENTS or not all(t.is_contiguous() for t in tensors):
            yield Piece(param, param.grad, {key: state[key] for key in keys}, state["step"])
            continue
        slices = [t.view(-1).split(CHUNK_ELEMENTS) for t in tensors]
        for param_slice, grad_slice, *state_slices in zip(*slices):
            yield Piece(param_slice, grad_slice, dict(zip(keys, state_slices)), state["step"])


def batches(items: Iterator[Piece]) -> Iterator[List[Piece]]:
    """Consecutive pieces gathered into lists of at most ``CHUNK_ELEMENTS`` elements (or one piece)."""
    batch: List[Piece] = []
    size = 0
    for item in items:
        if batch and size + item.param.numel() > CHUNK_ELEMENTS:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.param.numel()
    if batch:
        yield batch


def foreach_update_(kind: str, group: dict, params: Sequence[Tensor], states: Sequence[dict]) -> None:
    """Update ``params`` of ``group`` (states with ``step`` already advanced) with eager foreach ops."""
    constants = group_constants(group)
    keys = state_keys(kind, constants)
    for batch in batches(pieces(params, states, keys)):
        sizes, corrections, keep = step_scalars(kind, group, [{"step": p.step} for p in batch])
        weights = [p.param.float() if p.param.dtype in LOW_PRECISION else p.param for p in batch]
        grads = [p.grad.float() if p.grad.dtype in LOW_PRECISION else p.grad for p in batch]
        batch_states = {key: [p.state[key] for p in batch] for key in keys}
        update_chain_(kind, constants, weights, grads, batch_states, sizes, corrections, keep)
        for piece, weight in zip(batch, weights):
            if weight is not piece.param:
                piece.param.copy_(weight)


class GroupTensors(NamedTuple):
    """What the compiled update reads of one group: its tensors and its fixed hyper-parameters."""

    constants: Constants
    params: List[Tensor]
    grads: List[Tensor]
    states: Dict[str, List[Tensor]]


def update_groups_(kind: str, groups: Sequence[GroupTensors], scalars: Tensor) -> None:
    """:func:`update_chain_` for every group; ``scalars`` holds, for each group in turn, its
    tensors' sizes, then their 1 − β0^t, then the group's 1 − ηλ. This is what gets compiled."""
    values = scalars.unbind(0)
    offset = 0
    for group in groups:
        count = len(group.params)
        sizes = list(values[offset: offset + count])
        corrections = list(values[offset + count: offset + 2 * count])
        keep = values[offset + 2 * count]
        offset += 2 * count + 1
        weights = [p.float() if p.dtype in LOW_PRECISION else p for p in group.params]
        grads = [g.float() if g.dtype in LOW_PRECISION else g for g in group.grads]
        update_chain_(kind, group.constants, weights, grads, group.states, sizes, corrections, keep)
        for param, weight in zip(group.params, weights):
            if weight is not param:
                param.copy_(weight)


RECOMPILE_LIMIT = 64
"""How many shape/dtype variants :func:`compiled_update_` compiles before failing (torch's default
of 8 is reached by a process holding several optimizers, e.g. a test session)."""


@functools.lru_cache(maxsize=None)
def compiled_update_groups():
    """:func:`update_groups_` under ``torch.compile`` (compiled at its first call for each set of shapes)."""
    return torch.compile(update_groups_, fullgraph=True, dynamic=False)


def compiled_update_(kind: str, work: Sequence[Tuple[dict, Sequence[Tensor], Sequence[dict]]]) -> None:
    """Update every ``(group, params, states)`` of ``work`` (one device) in one compiled call.

    The first call for a given set of shapes and dtypes compiles (tens of seconds); an exception
    raised while compiling leaves every tensor untouched.
    """
    groups, numbers = [], []
    for group, params, states in work:
        if not params:
            continue
        constants = group_constants(group)
        keys = state_keys(kind, constants)
        groups.append(GroupTensors(
            constants, list(params), [p.grad for p in params],
            {key: [s[key] for s in states] for key in keys},
        ))
        sizes, corrections, keep = step_scalars(kind, group, states)
        numbers += sizes + corrections + [keep]
    if groups:
        device = groups[0].params[0].device
        scalars = torch.tensor(numbers, dtype=torch.float32).to(device, non_blocking=True)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            compiled_update_groups()(kind, groups, scalars)
