"""The analysis's outputs: CSV tables and PNG figures, each written atomically."""

import csv
import io
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from matplotlib.figure import Figure

from ...files import write_atomic

__all__ = ["write_csv", "plot_sensitivity_by_type", "plot_pruning_curve"]


def write_csv(path: Path, rows: Sequence[Dict[str, object]]) -> None:
    """Write ``rows`` (dicts with the same keys, in column order) as a CSV file with a header."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue().encode())


def _save_png(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_atomic(path, buffer.getvalue())


def plot_sensitivity_by_type(path: Path, values_by_type: Dict[str, np.ndarray], title: str) -> None:
    """Box plot, one box per layer type, of the positive sensitivities on a log scale.

    Boxes span the 25th to 75th percentile with a line at the median; whiskers reach the 1st and
    99th percentiles. Zeros cannot be drawn on a log axis; each label gives the type's share of them.
    """
    stats = []
    for kind, values in values_by_type.items():
        positive = values[values > 0]
        if positive.size == 0:
            continue
        p01, p25, p50, p75, p99 = np.quantile(positive, [0.01, 0.25, 0.5, 0.75, 0.99])
        zeros = 1 - positive.size / values.size
        label = f"{kind}\n({zeros:.0%} zero)" if zeros else kind
        stats.append(
            {"label": label, "whislo": p01, "q1": p25, "med": p50, "q3": p75, "whishi": p99, "fliers": []}
        )
    figure = Figure(figsize=(max(6.0, 0.9 * len(stats) + 2), 4.5), layout="constrained")
    axes = figure.subplots()
    if stats:
        axes.bxp(stats, showfliers=False)
        axes.set_yscale("log")
        axes.tick_params(axis="x", labelrotation=45, labelsize=8)
    axes.set_ylabel("sensitivity |θ·g| (positive values)")
    axes.set_title(title, fontsize=10)
    _save_png(figure, path)


def plot_pruning_curve(path: Path, rows: List[Dict[str, object]], title: str) -> None:
    """BLEU against the percentage of (non-embedding) weights pruned, one line per pruning
    criterion (the rows' ``criterion``), one marker per level."""
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    axes = figure.subplots()
    for criterion in dict.fromkeys(r["criterion"] for r in rows):
        own = [r for r in rows if r["criterion"] == criterion]
        axes.plot([r["prune_percent"] for r in own], [r["bleu"] for r in own], marker="o", label=f"by {criterion}")
    axes.legend()
    axes.set_xlabel("non-embedding weights of lowest score set to zero (%)")
    axes.set_ylabel("BLEU")
    axes.set_ylim(bottom=0)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    _save_png(figure, path)
