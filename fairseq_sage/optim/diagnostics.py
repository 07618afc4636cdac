"""Statistics of the SAGE learning-rate multipliers that the next update will apply, for training logs.

The fairseq adapters (:mod:`fairseq_sage.fairseq.optimizers`) call :func:`sage_statistics` every
``--log-interval`` updates, just before the optimizer steps, and log its result through fairseq's
metrics, so that ``sage_*`` values appear in the ``train_inner`` lines and in tensorboard.

The multipliers are computed by the functions of :mod:`fairseq_sage.optim.functional` (the
optimizers' own) on a copy of each sensitivity EMA Ī: the optimizer state, the weights and the
gradients are left untouched, and
no random number is drawn from torch's global generator, so training gives the same bits with and
without these statistics.
"""

import math
from typing import Dict, Iterable, List, Mapping

import torch
from torch import Tensor

from .functional import bias_correction, multiplier_from_terms_foreach_, sage_terms_foreach_
from .validation import working_dtype

__all__ = ["QUANTILES", "SAMPLE_SIZE", "next_update_number", "sage_statistics"]

QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
"""The quantiles of the multiplier that are reported, by the suffix of their key."""

SAMPLE_SIZE = 100_000
"""Quantiles are taken over at most this many elements, drawn at random (a fixed seed, a private
generator) from all SAGE parameters in proportion to their sizes; means and fractions use all."""


def next_update_number(param_groups: Iterable[dict], state: Mapping) -> int:
    """The number the optimizer's next update will have: 1 + the largest ``step`` in ``state``.

    This equals fairseq's ``num_updates`` after that update unless the optimizer state was reset
    (``--reset-optimizer``) part-way through a run.
    """
    steps = [
        int(state[p]["step"]) for g in param_groups for p in g["params"] if "step" in state.get(p, {})
    ]
    return 1 + max(steps, default=0)


def _sage_parameters(param_groups: Iterable[dict]) -> List[tuple]:
    """(parameter, group) for every parameter of a SAGE group that has a gradient."""
    return [(p, g) for g in param_groups if g.get("sage") for p in g["params"] if p.grad is not None]


def sage_statistics(
    param_groups: Iterable[dict], state: Mapping, sample_size: int = SAMPLE_SIZE, seed: int = 0
) -> Dict[str, float]:
    """Summarise the multipliers m = (U + ε)/(Ī_c + ε) that the next update will give every element.

    ``param_groups`` and ``state`` are a SAGE optimizer's (groups with ``sage``, ``beta0`` and
    ``sage_eps``; per-parameter ``step`` and ``sensitivity_ema``, absent before the first update).
    Each parameter's values are those of its next update (step t = its ``step`` + 1), in the
    precision the optimizer computes them in; they are aggregated in float64 over all elements of
    all SAGE parameters that have a gradient. Returns, empty if there is no such parameter:

    - ``sage_mult_mean``, ``sage_mult_p10``, ``sage_mult_p50``, ``sage_mult_p90``: mean and
      quantiles (over a sample of ``sample_size`` elements, all of them if there are fewer) of m;
    - ``sage_mult_frac_above_1``: the fraction of elements with m > 1 (steps larger than the base
      optimizer's);
    - ``sage_sensitivity_mean``: the mean bias-corrected sensitivity EMA Ī_c;
    - ``sage_variation_mean``: the mean local variation U = |I − Ī_c|, with I = |θ·g|.
    """
    members = _sage_parameters(param_groups)
    total = sum(p.numel() for p, _ in members)
    if total == 0:
        return {}
    generator = torch.Generator().manual_seed(seed)
    sums = torch.zeros(4, dtype=torch.float64)  # m, [m > 1], Ī_c, U
    samples = []
    for param, group in members:
        variation, ema_corrected = _next_terms(param, group, state.get(param, {}))
        term_sums = [ema_corrected.sum(dtype=torch.float64), variation.sum(dtype=torch.float64)]
        (multiplier,) = multiplier_from_terms_foreach_([variation], [ema_corrected], group["sage_eps"])
        sums += torch.stack([
            multiplier.sum(dtype=torch.float64), (multiplier > 1).sum(dtype=torch.float64), *term_sums,
        ]).cpu()
        samples.append(_sample(multiplier.flatten(), total, sample_size, generator))
    sample = torch.cat(samples).double()
    quantiles = torch.quantile(sample, torch.tensor(list(QUANTILES.values()), dtype=torch.float64))
    mult_mean, frac_above_1, sensitivity_mean, variation_mean = (sums / total).tolist()
    statistics = {"sage_mult_mean": mult_mean}
    statistics.update({f"sage_mult_{name}": q for name, q in zip(QUANTILES, quantiles.tolist())})
    statistics["sage_mult_frac_above_1"] = frac_above_1
    statistics["sage_sensitivity_mean"] = sensitivity_mean
    statistics["sage_variation_mean"] = variation_mean
    return statistics


@torch.no_grad()
def _next_terms(param: Tensor, group: dict, param_state: Mapping) -> tuple:
    """(U, Ī_c) of ``param``'s next update, leaving ``param_state`` unchanged.

    Half-precision values are computed in float32, as the optimizer does.
    """
    dtype = working_dtype(param.dtype)
    weights = param.detach().to(dtype)
    grad = param.grad.detach().to(dtype)
    ema = param_state.get("sensitivity_ema")
    ema = torch.zeros_like(weights) if ema is None else ema.detach().to(dtype, copy=True)
    step = int(param_state.get("step", 0)) + 1
    correction = bias_correction(group["beta0"], step)
    (variation,), (ema_corrected,) = sage_terms_foreach_([ema], [weights], [grad], group["beta0"], [correction])
    return variation, ema_corrected


def _sample(values: Tensor, total: int, sample_size: int, generator: torch.Generator) -> Tensor:
    """All of ``values`` (on the CPU) if ``total`` fits the sample, else a share of it drawn at random."""
    if total <= sample_size:
        return values.cpu()
    count = min(values.numel(), math.ceil(sample_size * values.numel() / total))
    indices = torch.randint(values.numel(), (count,), generator=generator)
    return values[indices.to(values.device)].cpu()
