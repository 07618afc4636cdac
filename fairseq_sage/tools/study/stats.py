"""The study's one statistics rule: the paired difference of two optimizers over seeds with its
Student t confidence interval (significant when it excludes 0), and sacreBLEU's paired bootstrap
between the best seed of each."""

import math
import statistics
from typing import Dict, List, Optional, Sequence

from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest
from scipy.stats import t as student_t

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, Optional[float]]:
    """Mean and the half-width t_{(1+c)/2, n−1} · s / √n of its interval (None for fewer than 2 values)."""
    n = len(values)
    mean = statistics.fmean(values)
    half = student_t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return {"n": n, "mean": mean, "half_width": half}


def paired_difference(baseline: Dict[int, float], other: Dict[int, float]) -> Dict[str, object]:
    """``other − baseline`` seed by seed (the seeds scored in both), with its :func:`t_interval`."""
    differences = {seed: other[seed] - baseline[seed] for seed in sorted(baseline.keys() & other.keys())}
    return {"per_seed": differences, **t_interval(list(differences.values()))}


def significant(difference: Dict[str, object]) -> bool:
    return difference["half_width"] is not None and abs(difference["mean"]) > difference["half_width"]


def paired_bootstrap(baseline: List[str], other: List[str], references: List[str], resamples: int = 1000) -> float:
    """The p-value of sacreBLEU's paired bootstrap (``--paired-bs``, its fixed seed) of ``other``'s BLEU
    against ``baseline``'s."""
    test = PairedTest([("baseline", baseline), ("other", other)], {"BLEU": BLEU(references=[references])},
                      references=None, test_type="bs", n_samples=resamples)
    return test()[1]["BLEU"][1].p_value


def verdict(test: str, label: str, baseline: str, difference: Dict[str, object]) -> str:
    """'test2016: Adam-SAGE +0.42 ± 0.31 BLEU (95 % CI ...), significant: Adam-SAGE beats Adam'."""
    mean, half = difference["mean"], difference["half_width"]
    if half is None:
        return f"{test}: {label} {mean:+.2f} BLEU on one seed: no interval, no verdict"
    winner = f"{label} beats {baseline}" if mean > 0 else f"{baseline} beats {label}"
    finding = f"significant: {winner}" if significant(difference) else "not significant"
    return (f"{test}: {label} {mean:+.2f} ± {half:.2f} BLEU (95 % CI of the paired difference over "
            f"{difference['n']} seeds), {finding}")


def bootstrap_reading(p_value: float, over_seeds_significant: bool) -> str:
    """What the best pair's bootstrap adds where it disagrees with the interval over seeds."""
    if (p_value < SIGNIFICANCE) == over_seeds_significant:
        return ""
    if p_value < SIGNIFICANCE:
        return (f" (below {SIGNIFICANCE:g}: these two models differ on this set, but another seed pair may not: "
                "over the seeds the difference is within their spread)")
    return f" ({SIGNIFICANCE:g} or above: these two models do not differ significantly, the seeds do)"
