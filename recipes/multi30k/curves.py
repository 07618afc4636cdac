"""learning_curves.png of the quickstart: train and validation loss of each optimizer against
updates, and Adam-SAGE's mean learning-rate multiplier (``sage_mult_mean`` of its train log)."""

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from studies.multi30k.plots import COLORS, save
from studies.multi30k.train_log import read_train_log


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
