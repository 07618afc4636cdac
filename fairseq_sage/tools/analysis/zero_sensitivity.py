"""Why a weight's sensitivity |θ·g| is exactly zero: dead ReLU units and unused embedding rows.

While the sensitivity batches run, forward hooks record, for every feed-forward block
(a module with ``fc1``, ``fc2`` and ``activation_fn`` = ReLU, as fairseq's transformer layers), how
often each ReLU unit fired (fc1 output > 0, at any position of a batch, padding included), and,
for every token embedding (an ``nn.Embedding`` named ``…embed_tokens``), which token ids occurred.
A weight with zero sensitivity is then attributed to one cause:

- ``dead_relu_unit``: a row of fc1's weight, an element of fc1's bias, or a column of fc2's
  weight that belongs to a unit that never fired (its gradient is zero on every batch);
- ``unused_embedding_row``: a row of a token embedding whose token never occurred (tied output
  projections still give such rows a gradient through the softmax, so they are counted only when
  their sensitivity is zero);
- ``other``: every other zero (e.g. θ = 0, key-projection biases, the padding row).
"""

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sensitivity import PARAMETER_TYPES, parameter_type

__all__ = ["ZERO_CAUSES", "ActivityRecord", "record_activity", "zero_sensitivity_causes"]

ZERO_CAUSES = {
    "ffn_fc1": ["dead_relu_unit", "other"],
    "ffn_fc2": ["dead_relu_unit", "other"],
    "embeddings": ["unused_embedding_row", "other"],
}
"""The causes each layer type's zeros can have; every other type has only ``other``."""


@dataclass
class ActivityRecord:
    """What the batches exercised: per feed-forward block (by module name) how often each ReLU
    unit fired, and per token embedding (by module name) how often each token id occurred."""

    unit_firings: Dict[str, Tensor] = field(default_factory=dict)
    token_counts: Dict[str, Tensor] = field(default_factory=dict)


def _feed_forward_blocks(model: nn.Module) -> Dict[str, nn.Module]:
    return {
        name: module for name, module in model.named_modules()
        if isinstance(getattr(module, "fc1", None), nn.Linear) and isinstance(getattr(module, "fc2", None), nn.Linear)
        and getattr(module, "activation_fn", None) is F.relu
    }


@contextlib.contextmanager
def record_activity(model: nn.Module) -> Iterator[ActivityRecord]:
    """Within the ``with`` block, count ReLU firings and token occurrences of ``model``'s forward
    passes into the yielded :class:`ActivityRecord`; the hooks are removed on leaving."""
    record = ActivityRecord()
    handles = []

    def count_firings(name):
        def hook(module, inputs, output):
            fired = (output.detach() > 0).reshape(-1, output.shape[-1]).sum(dim=0)
            record.unit_firings[name] = record.unit_firings.get(name, 0) + fired
        return hook

    def count_tokens(name):
        def hook(module, inputs, output):
            ids = inputs[0].detach().flatten()
            counts = torch.bincount(ids, minlength=module.num_embeddings)
            record.token_counts[name] = record.token_counts.get(name, 0) + counts
        return hook

    try:
        for name, block in _feed_forward_blocks(model).items():
            handles.append(block.fc1.register_forward_hook(count_firings(name)))
        for name, module in model.named_modules():
            if isinstance(module, nn.Embedding) and name.split(".")[-1] == "embed_tokens":
                handles.append(module.register_forward_hook(count_tokens(name)))
        yield record
    finally:
        for handle in handles:
            handle.remove()


def _cause_masks(sensitivity: Dict[str, Tensor], record: ActivityRecord) -> Dict[str, Dict[str, Tensor]]:
    """{parameter name: {cause: boolean mask}} of the elements whose inactivity explains a zero."""
    masks: Dict[str, Dict[str, Tensor]] = {}
    for block, firings in record.unit_firings.items():
        prefix = f"{block}." if block else ""
        dead = (firings == 0).cpu()
        # a unit is a row of fc1's weight, an element of fc1's bias, a column of fc2's weight
        for name, unit_mask in ((f"{prefix}fc1.weight", dead[:, None]), (f"{prefix}fc1.bias", dead),
                                (f"{prefix}fc2.weight", dead[None, :])):
            if name in sensitivity:
                masks.setdefault(name, {})["dead_relu_unit"] = unit_mask.expand(sensitivity[name].shape)
    for module, counts in record.token_counts.items():
        name = f"{module}.weight"
        if name in sensitivity:
            unused = (counts == 0).cpu()
            masks.setdefault(name, {})["unused_embedding_row"] = unused[:, None].expand(sensitivity[name].shape)
    return masks


def zero_sensitivity_causes(sensitivity: Dict[str, Tensor], record: ActivityRecord) -> List[dict]:
    """Rows (type, cause, weights, fraction_of_type): how many weights of each layer type have
    sensitivity exactly zero for each cause of :data:`ZERO_CAUSES` (the type's causes in that
    order, ``other`` last), as a count and as a fraction of all the type's weights. Types are in
    the order of :data:`.sensitivity.PARAMETER_TYPES`, then ``other``; absent types are left out."""
    masks = _cause_masks(sensitivity, record)
    counts: Dict[str, Dict[str, int]] = {}
    sizes: Dict[str, int] = {}
    for name, values in sensitivity.items():
        kind = parameter_type(name)
        causes = ZERO_CAUSES.get(kind, ["other"])
        tally = counts.setdefault(kind, dict.fromkeys(causes, 0))
        sizes[kind] = sizes.get(kind, 0) + values.numel()
        zero = (values == 0).cpu()
        explained = torch.zeros_like(zero)
        for cause, mask in masks.get(name, {}).items():
            if cause in tally:
                attributed = zero & mask & ~explained
                tally[cause] += int(attributed.sum())
                explained |= attributed
        tally["other"] += int((zero & ~explained).sum())
    order = [kind for kind, _ in PARAMETER_TYPES] + ["other"]
    return [
        {"type": kind, "cause": cause, "weights": weights, "fraction_of_type": weights / sizes[kind]}
        for kind in order if kind in counts for cause, weights in counts[kind].items()
    ]
