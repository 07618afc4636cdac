"""Optimizer state matched to parameters by name rather than by position.

``torch.optim.Optimizer.load_state_dict`` gives the i-th parameter of the saved groups' order the
state of the i-th parameter of the current order. When the parameters were grouped otherwise
before the state was saved (fairseq's ``--sage-params`` choosing other weights on a resumed run,
say), that hands one weight's moments and Ī to another of the same size, or fails on groups of
other sizes. torch (>= 2.6) records each group's parameter names under ``"param_names"`` (given
as ``(name, tensor)`` pairs, as ``model.named_parameters()`` yields them; the fairseq adapters
always name them), and :func:`align_by_name` uses them to rearrange a saved state dict so that
the positional loading moves every parameter's state with its name.
"""

from typing import List, Optional, Sequence

__all__ = ["align_by_name", "group_names"]


def group_names(groups: Sequence[dict]) -> Optional[List[List[str]]]:
    """Each group's parameter names, or None unless every group names each of its parameters."""
    names = []
    for group in groups:
        named = group.get("param_names")
        if named is None or len(named) != len(group["params"]):
            return None
        names.append(list(named))
    return names


def _listed(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def align_by_name(state_dict: dict, groups: Sequence[dict]) -> dict:
    """``state_dict`` rearranged to the grouping of ``groups``, each parameter's state found by name.

    Returned unchanged where the saved groups or ``groups`` lack names, or where both hold the
    same names in the same order: torch's loading then does what it always does (the saved
    hyper-parameters replace the groups' own). Otherwise each group keeps its own
    hyper-parameters, since no saved group corresponds to it, and each parameter gets the state
    saved under its name (none, if it had none). ValueError if the names differ as sets.
    """
    saved_groups = state_dict["param_groups"]
    saved, current = group_names(saved_groups), group_names(groups)
    if saved is None or current is None or saved == current:
        return state_dict
    saved_index = {name: index for group, names in zip(saved_groups, saved) for name, index in zip(names, group["params"])}
    current_names = [name for names in current for name in names]
    unknown = [name for name in current_names if name not in saved_index]
    left_over = sorted(set(saved_index) - set(current_names))
    problems = ([f"it has no {_listed(unknown)}"] if unknown else []) + (
        [f"it has {_listed(left_over)}, unknown here"] if left_over else [])
    if problems:
        raise ValueError(f"the saved optimizer state is for other parameters ({'; '.join(problems)})")
    state, aligned_groups, start = {}, [], 0
    for group, names in zip(groups, current):
        positions = list(range(start, start + len(names)))
        start += len(names)
        for position, name in zip(positions, names):
            saved_state = state_dict["state"].get(saved_index[name])
            if saved_state is not None:
                state[position] = saved_state
        aligned_groups.append(dict({k: v for k, v in group.items() if k != "params"}, params=positions))
    return dict(state_dict, state=state, param_groups=aligned_groups)
