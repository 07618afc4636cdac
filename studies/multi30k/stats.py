"""The statistics of the converged study: 95 % confidence intervals over seeds (Student's t), the
paired difference of two optimizers seed by seed, the one-line verdict, and what the paired bootstrap
of the best seed pair adds to it."""

import math
import statistics
from typing import Dict, Optional, Sequence

from scipy.stats import t as student_t

CONFIDENCE = 0.95
SIGNIFICANCE = round(1 - CONFIDENCE, 9)  # 0.05, not 0.050000000000000044


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, Optional[float]]:
    """Mean and the half-width t_{(1+c)/2, n−1} · s / √n of its confidence interval (s: sample
    standard deviation, n − 1); half_width is None for fewer than two values."""
    n = len(values)
    mean = statistics.fmean(values) if values else None
    if n < 2:
        return {"n": n, "mean": mean, "half_width": None}
    quantile = student_t.ppf((1 + confidence) / 2, n - 1)
    return {"n": n, "mean": mean, "half_width": quantile * statistics.stdev(values) / math.sqrt(n)}


def paired_difference(baseline: Dict[int, float], other: Dict[int, float]) -> Dict[str, object]:
    """``other − baseline`` for each seed scored in both, and :func:`t_interval` of those differences."""
    seeds = sorted(baseline.keys() & other.keys())
    differences = {seed: other[seed] - baseline[seed] for seed in seeds}
    return {"per_seed": differences, **t_interval(list(differences.values()))}


def verdict(test: str, difference: Dict[str, object], metric: str = "BLEU") -> str:
    """'test2016: Adam-SAGE +0.42 ± 0.31 BLEU (…), significant: Adam-SAGE beats Adam': significant
    when the confidence interval of the paired difference excludes 0, and then the sign names the winner."""
    mean, half = difference["mean"], difference["half_width"]
    if half is None:
        return f"{test}: Adam-SAGE {mean:+.2f} {metric} on one seed: no interval, no verdict"
    winner = "Adam-SAGE beats Adam" if mean > 0 else "Adam beats Adam-SAGE"
    finding = f"significant: {winner}" if significant(difference) else "not significant"
    return (f"{test}: Adam-SAGE {mean:+.2f} ± {half:.2f} {metric} (95 % CI of the paired difference over "
            f"{difference['n']} seeds), {finding}")


def significant(difference: Dict[str, object]) -> bool:
    """Whether the confidence interval of the paired difference excludes 0 (as :func:`verdict` says)."""
    return difference["half_width"] is not None and abs(difference["mean"]) > difference["half_width"]


def bootstrap_reading(p_value: float, over_seeds_significant: bool, level: float = SIGNIFICANCE) -> str:
    """What a paired bootstrap p-value of one seed pair adds to the verdict over seeds: nothing when
    both agree; where they disagree, that the one pair tests one pair of models on one test set, while
    the seeds' interval holds the seed-to-seed spread."""
    if (p_value < level) == over_seeds_significant:
        return ""
    if p_value < level:
        return (f" (below {level:g}: these two models differ on this set, but another seed pair may not: "
                "over the seeds the difference is within their spread)")
    return f" ({level:g} or above: these two models do not differ significantly, the seeds do)"
