"""Parameter names in fairseq's trainer, and the SAGE / plain groups that ``--sage-params`` chooses.

Every group records its parameters' names under ``"param_names"`` (torch's key), so that the
optimizer state in a checkpoint says which weight each entry belongs to, and a resumed run moves
each weight's state with its name (:mod:`fairseq_sage.optim.named_state`).
"""

import gc
import re
from typing import Dict, List, Optional

from torch import nn

from .errors import SageFlagError

__all__ = ["parameter_names", "sage_param_groups"]

FLATTENED_PARAMETER = re.compile(r"(^|\.)flat_param_\w*$")
"""Name of a parameter that fairscale's FullyShardedDataParallel made of many flattened ones."""

WRAPPER_PREFIX = re.compile(r"^(module\.)+")
"""What data-parallel wrappers (torch's and fairseq's DistributedDataParallel, fairseq's
ModuleProxyWrapper) put before the model's own parameter names: it depends on the number of
processes, which may change between a run and its resumption, so it is dropped."""


def parameter_names(params: List[nn.Parameter]) -> Dict[int, str]:
    """Map ``id(p)`` to the name ``p`` has in the live fairseq model (or criterion) that holds it.

    fairseq's trainer hands optimizers bare tensors. Rather than patching the trainer, the modules
    alive in this process are searched once, read-only, for the root modules holding these tensors;
    a tensor held by nested roots gets its longest (outermost) name, without the ``module.``
    prefixes of data-parallel wrappers (``encoder.layers.0.fc1.weight`` on one process and on many).
    """
    wanted = {id(p) for p in params}
    names: Dict[int, str] = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), nn.Module):  # not isinstance(): it raises on a dead weakref.proxy
            for name, param in obj.named_parameters():
                if id(param) in wanted and len(name) > len(names.get(id(param), "")):
                    names[id(param)] = name
    return {key: WRAPPER_PREFIX.sub("", name) for key, name in names.items()}


def _group(params: List[nn.Parameter], names: Dict[int, str], sage: bool) -> dict:
    """A parameter group, with its parameters' names if ``names`` has them."""
    group = {"params": params, "sage": sage}
    if names:
        group["param_names"] = [names[id(p)] for p in params]
    return group


def sage_param_groups(params: List[nn.Parameter], pattern: Optional[str]) -> List[dict]:
    """Split ``params`` into the group that gets SAGE (names matching ``pattern``) and the rest,
    each with its parameters' names where every parameter has one (not where fairseq hands the
    optimizer float32 copies: ``--fp16``, ``--bf16``)."""
    params = list(params)
    found = parameter_names(params)
    names = found if len(found) == len(params) else {}  # unnamed copies: no names at all
    if pattern is None:
        return [_group(params, names, sage=True)]
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise SageFlagError(f"--sage-params {pattern!r} is not a valid regular expression ({err}); "
                            "fix the pattern, e.g. 'encoder|decoder'")
    if not names:
        raise SageFlagError(
            f"--sage-params needs parameter names, but {len(params) - len(found)} parameter(s) given to the "
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
    return [_group(with_sage, names, sage=True)] + (
        [_group(without_sage, names, sage=False)] if without_sage else []
    )
