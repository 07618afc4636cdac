"""Multi-tensor implementations: the reference chain written with ``torch._foreach_*`` over lists.

The chain is the reference path's (:mod:`fairseq_sage.optim.optimizers`): base step (the registry's
foreach form, :mod:`fairseq_sage.optim.base_steps`) -> SAGE multiplier
(:mod:`fairseq_sage.optim.functional`) -> decoupled weight decay -> apply, in float32 for
half-precision parameters. :func:`update_chain_` writes it once; two implementations run it:

- :func:`foreach_update_`, eager, one group at a time in batches of at most ``CHUNK_ELEMENTS``
  elements (large tensors are cut into views), so that its temporaries (at most four of a batch's
  size) stay a few MB whatever the model size, and in cache. The fallback where nothing compiles;
  on CPU, where foreach operations run tensor by tensor, about as fast as the reference path.
- :func:`compiled_update_`, all groups at once under ``torch.compile(fullgraph=True)``: inductor
  fuses the chain into a few kernels without temporaries (Triton on CUDA, C++/OpenMP on CPU).
  The numbers that change every update (the base's step sizes and coefficients, 1 − β0^t, ηλ:
  :func:`fairseq_sage.optim.base_steps.step_scalars`) enter as one tensor, so the learning-rate
  schedule never triggers a recompilation.

Results match the reference path to rounding: the weight decay is θ·(1 − ηλ) instead of
θ − ηλ·θ and the update is (size · num) · m / den instead of size · (m · num) / den.
"""

import functools
from typing import Dict, Iterator, List, NamedTuple, Sequence, Tuple, Union

import torch
from torch import Tensor

from .base_steps import BaseOptimizer, Constants, Scalars, group_constants, step_scalars
from .functional import sage_multiplier_foreach_
from .validation import in_working_dtype

__all__ = ["CHUNK_ELEMENTS", "update_chain_", "foreach_update_", "compiled_update_"]

CHUNK_ELEMENTS = 1 << 18
"""At most this many elements (1 MB per float32 temporary: they stay in cache) per eager foreach batch."""


def update_chain_(
    base: BaseOptimizer,
    constants: Constants,
    weights: List[Tensor],
    grads: List[Tensor],
    states: Dict[str, List[Tensor]],
    coefficients: Sequence[Scalars],
    corrections: Scalars,
    decay: Union[float, Tensor],
) -> None:
    """One update of ``weights`` (float32 or wider, as their ``grads`` and ``states``), in place:
    θ ← θ·(1 − ηλ) − size · numerator ⊙ m / denominator.

    ``coefficients`` holds the base's numbers (first the sizes), each one per tensor,
    ``corrections`` each tensor's 1 − β0^t, ``decay`` is ηλ; all are numbers, or 0-dim tensors
    under ``torch.compile``.
    """
    sizes, *step_coefficients = coefficients
    numerators, denominators = base.step_foreach(constants, grads, states, step_coefficients)
    updates = torch._foreach_mul(numerators, sizes)
    if constants.sage:
        multipliers = sage_multiplier_foreach_(
            states["sensitivity_ema"], weights, grads, constants.beta0, corrections, constants.sage_eps
        )
        torch._foreach_mul_(updates, multipliers)
    if denominators is not None:
        torch._foreach_div_(updates, denominators)
    if constants.decays_weights:
        torch._foreach_mul_(weights, 1 - decay)
    torch._foreach_sub_(weights, updates)


def state_keys(base: BaseOptimizer, constants: Constants) -> Tuple[str, ...]:
    """The state entries the chain reads and writes for ``base`` with these constants."""
    return base.state_keys(constants) + (("sensitivity_ema",) if constants.sage else ())


class Piece(NamedTuple):
    """A parameter, or a slice of one, with its gradient and state buffers (sliced alike) and the
    whole parameter's state (its step count and scalar state)."""

    param: Tensor
    grad: Tensor
    state: Dict[str, Tensor]
    owner: dict


def flat_slices(tensors: Sequence[Tensor]) -> Iterator[Tuple[Tensor, ...]]:
    """``tensors`` (of one shape) as they are, or, when they are contiguous and larger than
    ``CHUNK_ELEMENTS``, as matching flat slices of at most that size (views: writing them writes
    the tensors)."""
    if tensors[0].numel() <= CHUNK_ELEMENTS or not all(t.is_contiguous() for t in tensors):
        yield tuple(tensors)
        return
    yield from zip(*(t.view(-1).split(CHUNK_ELEMENTS) for t in tensors))


def pieces(params: Sequence[Tensor], states: Sequence[dict], keys: Sequence[str]) -> Iterator[Piece]:
    """The parameters, contiguous ones larger than ``CHUNK_ELEMENTS`` cut into flat slices."""
    for param, state in zip(params, states):
        for param_slice, grad_slice, *state_slices in flat_slices([param, param.grad] + [state[key] for key in keys]):
            yield Piece(param_slice, grad_slice, dict(zip(keys, state_slices)), state)


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


def foreach_update_(base: BaseOptimizer, group: dict, params: Sequence[Tensor], states: Sequence[dict]) -> None:
    """Update ``params`` of ``group`` (states with ``step`` already advanced) with eager foreach ops."""
    constants = group_constants(group)
    keys = state_keys(base, constants)
    for batch in batches(pieces(params, states, keys)):
        coefficients, corrections, decay = step_scalars(base, group, [p.owner for p in batch])
        weights = [in_working_dtype(p.param) for p in batch]
        grads = [in_working_dtype(p.grad) for p in batch]
        batch_states = {key: [p.state[key] for p in batch] for key in keys}
        update_chain_(base, constants, weights, grads, batch_states, coefficients, corrections, decay)
        for piece, weight in zip(batch, weights):
            if weight is not piece.param:
                piece.param.copy_(weight)


class GroupTensors(NamedTuple):
    """What the compiled update reads of one group: its tensors, its fixed hyper-parameters and
    how many numbers per tensor its base takes (:attr:`BaseOptimizer.coefficients`)."""

    constants: Constants
    coefficient_count: int
    params: List[Tensor]
    grads: List[Tensor]
    states: Dict[str, List[Tensor]]


def update_groups_(base: BaseOptimizer, groups: Sequence[GroupTensors], scalars: Tensor) -> None:
    """:func:`update_chain_` for every group; ``scalars`` holds, for each group in turn, each of
    the base's numbers for all its tensors (first their sizes), then their 1 − β0^t, then the
    group's ηλ. This is what gets compiled."""
    values = scalars.unbind(0)
    offset = 0
    for group in groups:
        count = len(group.params)
        columns = []
        for _ in range(group.coefficient_count + 1):
            columns.append(list(values[offset: offset + count]))
            offset += count
        *coefficients, corrections = columns
        decay = values[offset]
        offset += 1
        weights = [in_working_dtype(p) for p in group.params]
        grads = [in_working_dtype(g) for g in group.grads]
        update_chain_(base, group.constants, weights, grads, group.states, coefficients, corrections, decay)
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


def compiled_update_(base: BaseOptimizer, work: Sequence[Tuple[dict, Sequence[Tensor], Sequence[dict]]]) -> None:
    """Update every ``(group, params, states)`` of ``work`` (one device) in one compiled call.

    The first call for a given set of shapes and dtypes compiles (tens of seconds); an exception
    raised while compiling leaves every tensor untouched.
    """
    groups, numbers = [], []
    for group, params, states in work:
        if not params:
            continue
        constants = group_constants(group)
        keys = state_keys(base, constants)
        coefficients, corrections, decay = step_scalars(base, group, states)
        groups.append(GroupTensors(
            constants, len(coefficients), list(params), [p.grad for p in params],
            {key: [s[key] for s in states] for key in keys},
        ))
        numbers += [number for column in coefficients for number in column] + corrections + [decay]
    if groups:
        device = groups[0].params[0].device
        scalars = torch.tensor(numbers, dtype=torch.float32).to(device, non_blocking=True)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            compiled_update_groups()(base, groups, scalars)
