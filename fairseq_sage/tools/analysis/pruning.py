"""One-shot pruning by sensitivity: set the least sensitive weights of a model to zero."""

from typing import Dict

import torch
from torch import Tensor

from .sensitivity import parameter_type

__all__ = ["UNPRUNED_TYPES", "SensitivityRanking", "prunable", "prune_"]

UNPRUNED_TYPES = {"embeddings"}
"""Layer types that pruning leaves alone (see :data:`.sensitivity.PARAMETER_TYPES`)."""


def prunable(sensitivity: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The entries of ``sensitivity`` whose parameters may be pruned: all but embeddings."""
    return {
        name: values for name, values in sensitivity.items() if parameter_type(name) not in UNPRUNED_TYPES
    }


class SensitivityRanking:
    """The elements of several tensors ranked together by ascending sensitivity.

    ``sensitivity`` maps parameter names to tensors of the parameters' shapes. Ties are broken by
    position (the order of ``sensitivity``, then the elements' flat index), so every fraction
    selects a well-defined set of elements.
    """

    def __init__(self, sensitivity: Dict[str, Tensor]):
        self.shapes = {name: values.shape for name, values in sensitivity.items()}
        flat = torch.cat([values.detach().flatten() for values in sensitivity.values()])
        self.order = torch.argsort(flat, stable=True)
        self.sorted_values = flat[self.order]

    @property
    def size(self) -> int:
        """The number of ranked elements."""
        return self.order.numel()

    def count(self, percent: float) -> int:
        """How many elements ``percent`` % of them is: round(percent / 100 · size)."""
        return round(percent / 100 * self.size)

    def threshold(self, percent: float) -> float:
        """The largest sensitivity among the least sensitive ``percent`` % (0.0 if none is)."""
        count = self.count(percent)
        return self.sorted_values[count - 1].item() if count else 0.0

    def least_sensitive(self, percent: float) -> Dict[str, Tensor]:
        """Boolean masks, by name, selecting the :meth:`count` least sensitive elements."""
        selected = torch.zeros(self.size, dtype=torch.bool, device=self.order.device)
        selected[self.order[: self.count(percent)]] = True
        masks, start = {}, 0
        for name, shape in self.shapes.items():
            numel = shape.numel()
            masks[name] = selected[start : start + numel].view(shape)
            start += numel
        return masks


@torch.no_grad()
def prune_(params: Dict[str, Tensor], masks: Dict[str, Tensor]) -> int:
    """Set the elements of ``params[name]`` selected by ``masks[name]`` to zero; return how many."""
    for name, mask in masks.items():
        params[name].masked_fill_(mask.to(params[name].device), 0)
    return sum(int(mask.sum()) for mask in masks.values())
