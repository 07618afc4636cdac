"""The optimizers the benchmarks time, by the name their rows are printed under.

:mod:`benchmarks.sage_speed`, :mod:`benchmarks.step_memory` and :mod:`benchmarks.gpu_check` all
build their optimizers from :func:`optimizer_factories`, so that a row of one names the same
configuration as the same row of another.
"""

from typing import Dict, Sequence

import torch

from benchmarks.step_timing import OptimizerFactory

BENCHMARKED_IMPLEMENTATIONS = ("reference", "foreach", "cpp", "compiled")
HYPER = dict(lr=5e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=1e-4)


def optimizer_factories(impls: Sequence[str], device: str) -> Dict[str, OptimizerFactory]:
    """fairseq's ``adam``, torch's fused AdamW, adam_sage on each of ``impls`` as ``fairseq-train``
    runs it (``check_finite=False``: fairseq's trainer checks the gradients itself), and adam_sage
    with the torch default (``auto +check``), all with :data:`HYPER`. The C++ kernel is CPU only,
    so ``cpp`` is left out on another device."""
    from fairseq.optim.adam import Adam as FairseqAdam

    from fairseq_sage import AdamSAGE

    factories = {
        "fairseq adam": lambda params: FairseqAdam(params, **HYPER),
        "torch AdamW fused": lambda params: torch.optim.AdamW(params, fused=True, **HYPER),
    }
    for impl in impls:
        if impl == "cpp" and device != "cpu":
            continue
        factories[f"adam_sage {impl}"] = (
            lambda impl: lambda params: AdamSAGE(params, impl=impl, check_finite=False, **HYPER))(impl)
    factories["adam_sage auto +check"] = lambda params: AdamSAGE(params, **HYPER)
    return factories
