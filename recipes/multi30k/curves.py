"""learning_curves.png of the quickstart: train and validation loss of each optimizer against
updates, and Adam-SAGE's mean learning-rate multiplier (``sage_mult_mean`` of its train log)."""

import io
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure
from train_log import read_train_log  # recipes/multi30k/train_log.py, beside this module

from fairseq_sage.files import write_atomic

COLORS = {"adam": "tab:blue", "adam_sage": "tab:orange"}


def save(figure: Figure, path: Path) -> None:
    """The figure as a PNG at ``path``, written atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())


def plot_learning_curves(workdir: Path, optimizers: Sequence[str], path: Path) -> None:
    """Draw the curves from WORKDIR/checkpoints/OPTIMIZER/train.log into ``path`` (a PNG)."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axes, multiplier_axes = figure.subplots(1, 2)
    for optimizer in optimizers:
        log = read_train_log(workdir / "checkpoints" / optimizer / "train.log")
        color = COLORS.get(optimizer)
        loss_axes.plot([r["num_updates"] for r in log.train], [r["loss"] for r in log.train],
                       color=color, label=f"{optimizer} train")
        loss_axes.plot([r["num_updates"] for r in log.valid], [r["loss"] for r in log.valid],
                       color=color, linestyle="--", marker="o", label=f"{optimizer} valid")
        multiplier = [r for r in log.train if "sage_mult_mean" in r]
        if multiplier:
            multiplier_axes.plot([r["num_updates"] for r in multiplier], [r["sage_mult_mean"] for r in multiplier],
                                 color=color, label=optimizer)
    loss_axes.set(xlabel="updates", ylabel="label-smoothed cross-entropy (bits)", title="loss")
    loss_axes.legend()
    multiplier_axes.axhline(1.0, color="grey", linewidth=0.8)
    multiplier_axes.set(xlabel="updates", ylabel="mean SAGE lr multiplier", title="Adam-SAGE's lr multiplier")
    if multiplier_axes.lines[1:]:
        multiplier_axes.legend()
    save(figure, path)
