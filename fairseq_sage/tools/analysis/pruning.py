"""One-shot pruning: set the weights of a model with the lowest score to zero, the score being
the sensitivity |θ·g| or, as the usual baseline, the magnitude |θ|."""

from typing import Dict

import torch
from torch import Tensor

from .sensitivity import parameter_type

__all__ = ["PRUNING_CRITERIA", "UNPRUNED_TYPES", "SensitivityRanking", "largest_selected", "prunable", "prune_",
           "pruning_scores"]

PRUNING_CRITERIA = ("sensitivity", "magnitude")
"""The scores weights can be pruned by: the sensitivity |θ·g| and the magnitude |θ|."""

UNPRUNED_TYPES = {"embeddings"}
"""Layer types that pruning leaves alone (see :data:`.sensitivity.PARAMETER_TYPES`)."""


def prunable(sensitivity: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The entries of ``sensitivity`` whose parameters may be pruned: all but embeddings."""
    return {
        name: values for name, values in sensitivity.items() if parameter_type(name) not in UNPRUNED_TYPES
    }


def pruning_scores(
    criterion: str, sensitivity: Dict[str, Tensor], params: Dict[str, Tensor]
) -> Dict[str, Tensor]:
    """The prunable weights' scores by ``criterion`` (one of :data:`PRUNING_CRITERIA`), by name, in
    the order of ``sensitivity``: the sensitivity itself, or |θ| of ``params``."""
    if criterion == "sensitivity":
        return prunable(sensitivity)
    if criterion == "magnitude":
        return {name: params[name].detach().abs().float() for name in prunable(sensitivity)}
    raise ValueError(f"unknown pruning criterion {criterion!r}; expected one of {', '.join(PRUNING_CRITERIA)}")


class SensitivityRanking:
    """The elements of several tensors ranked together by ascending sensitivity (or any other
    score, e.g. the magnitude).

    ``sensitivity`` maps parameter names to tensors of the parameters' shapes. Ties are broken by
    position (the order of ``sensitivity``, then the elements' flat index), so every fraction
    selects a well-defined set of elements.
    """

    def __init__(self, sensitivity: Dict[str, Tensor]):
        self.shapes = {name: values.shape for name, values in sensitivity.items()}
        flat = torch.cat([values.detach().flatten() for values in sensitivity.values()])
        self.order = torch.argsort(flat, stable=True)

    @property
    def size(self) -> int:
        """The number of ranked elements."""
        return self.order.numel()

    def count(self, percent: float) -> int:
        """How many elements ``percent`` % of them is: round(percent / 100 · size)."""
        return round(percent / 100 * self.size)

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


def largest_selected(values: Dict[str, Tensor], masks: Dict[str, Tensor]) -> float:
    """The largest element of ``values`` that ``masks`` select (0.0 if none is): the threshold of a
    pruning level, on the scale of the criterion that ranked it or of another one."""
    return max((float(values[name][mask].max()) for name, mask in masks.items() if mask.any()), default=0.0)


@torch.no_grad()
def prune_(params: Dict[str, Tensor], masks: Dict[str, Tensor]) -> int:
    """Set the elements of ``params[name]`` selected by ``masks[name]`` to zero; return how many."""
    for name, mask in masks.items():
        params[name].masked_fill_(mask.to(params[name].device), 0)
    return sum(int(mask.sum()) for mask in masks.values())
