"""Parameter names in fairseq's trainer, and the SAGE / plain groups that ``--sage-params`` chooses."""

import gc
import re
from typing import Dict, List, Optional

from torch import nn

from .errors import SageFlagError

__all__ = ["parameter_names", "sage_param_groups"]

FLATTENED_PARAMETER = re.compile(r"(^|\.)flat_param_\w*$")
"""Name of a parameter that fairscale's FullyShardedDataParallel made of many flattened ones."""


def parameter_names(params: List[nn.Parameter]) -> Dict[int, str]:
    """Map ``id(p)`` to the name ``p`` has in the live fairseq model (or criterion) that holds it.

    fairseq's trainer hands optimizers bare tensors. Rather than patching the trainer, the modules
    alive in this process are searched once, read-only, for the root modules holding these tensors;
    a tensor held by nested roots gets its longest (outermost) name.
    """
    wanted = {id(p) for p in params}
    names: Dict[int, str] = {}
    for obj in gc.get_objects():
        if isinstance(obj, nn.Module):
            for name, param in obj.named_parameters():
                if id(param) in wanted and len(name) > len(names.get(id(param), "")):
                    names[id(param)] = name
    return names


def sage_param_groups(params: List[nn.Parameter], pattern: Optional[str]) -> List[dict]:
    """Split ``params`` into the group that gets SAGE (names matching ``pattern``) and the rest."""
    params = list(params)
    if pattern is None:
        return [{"params": params, "sage": True}]
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise SageFlagError(f"--sage-params {pattern!r} is not a valid regular expression ({err}); "
                            "fix the pattern, e.g. 'encoder|decoder'")
    names = parameter_names(params)
    unnamed = [p for p in params if id(p) not in names]
    if unnamed:
        raise SageFlagError(
            f"--sage-params needs parameter names, but {len(unnamed)} parameter(s) given to the "
            "optimizer belong to no model (with --fp16 or --bf16 fairseq optimizes float32 copies "
            "of the weights, flattened unless --fp16-no-flatten-grads): use --memory-efficient-fp16 "
            "(or --memory-efficient-bf16) instead, or drop --sage-params")
    flattened = sorted(name for name in names.values() if FLATTENED_PARAMETER.search(name))
    if flattened:
        raise SageFlagError(
            f"--sage-params cannot choose among weights that were flattened into one tensor "
            f"({flattened[0]}, by --ddp-backend fully_sharded): use another --ddp-backend, or drop "
            "--sage-params")
    with_sage = [p for p in params if regex.search(names[id(p)])]
    if not with_sage:
        examples = ", ".join(sorted(names.values())[:3])
        raise SageFlagError(f"--sage-params {pattern!r} matches no parameter (names look like "
                            f"{examples}); fix the pattern or drop the flag")
    chosen = {id(p) for p in with_sage}
    without_sage = [p for p in params if id(p) not in chosen]
    return [{"params": with_sage, "sage": True}] + (
        [{"params": without_sage, "sage": False}] if without_sage else []
    )
