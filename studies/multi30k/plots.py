"""The study's figures, from the runs' logs and scores (PNG files in WORKDIR/figures/).

    python -m studies.multi30k.plots WORKDIR

- ``learning_curves.png``: train loss (every ``--log-interval`` updates) and validation loss (every
  validation) of every seed of each optimizer's best setting;
- ``sage_multiplier.png``: Adam-SAGE's learning-rate multiplier (mean, p10, p50, p90), the fraction of
  weights whose step SAGE enlarges, and the mean sensitivity and local variation over training, for
  its best setting's first seed (cf. Fig. 4 and 6 of Liang et al., 2022);
- ``beta0_lr_heatmap.png``: validation BLEU over Adam-SAGE's beta0 × lr grid (cf. their Fig. 7/8),
  beside validation BLEU against lr for Adam and for each beta0;
- ``pruning.png``: BLEU after pruning the least sensitive weights, both best first-seed models;
- ``sensitivity_OPTIMIZER.png``: copies of the analysis's sensitivity-per-layer-type plots.

A figure whose data does not exist yet is not drawn.
"""

import io
import math
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from matplotlib import colormaps
from matplotlib.figure import Figure

from .results import RunResult, best_runs, collect, pruning_curves
from .runs import LABELS, Run, grid_runs, seed_runs
from .settings import StudyError, StudySettings, read_settings, run_cli, write_atomically

COLORS = {"adam": "tab:blue", "adam_sage": "tab:orange"}
SEED_STYLES = ("-", "--", ":", "-.")
FIGURES_DIR = "figures"
SUBSET_NAMES = {"valid": "val", "test": "test2016", "test1": "test2017"}
"""The data-bin subsets (PRUNE_SUBSET) by their Multi30k names."""


def save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_atomically(path, buffer.getvalue())


def setting_label(run: Run) -> str:
    beta0 = f", β0={run.beta0}" if run.beta0 is not None else ""
    return f"{LABELS[run.optimizer]} (lr={run.lr}{beta0})"


def plot_learning_curves(path: Path, curves: Dict[Run, RunResult]) -> None:
    """Train loss per log line and validation loss per validation, one line per run."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    train_axes, valid_axes = figure.subplots(1, 2)
    for run, result in curves.items():
        style = dict(color=COLORS[run.optimizer], linestyle=SEED_STYLES[(run.seed - 1) % len(SEED_STYLES)])
        label = f"{setting_label(run)} seed {run.seed}"
        train = result.log.train
        train_axes.plot([r["num_updates"] for r in train], [r["loss"] for r in train], label=label, **style)
        valid = result.log.valid
        valid_axes.plot([r["num_updates"] for r in valid], [r["loss"] for r in valid], marker="o",
                        markersize=3, label=label, **style)
    for axes, title in ((train_axes, "train loss"), (valid_axes, "validation loss")):
        axes.set_xlabel("updates")
        axes.set_ylabel("label-smoothed cross-entropy (bits/token)")
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
    valid_axes.legend(fontsize=7)
    save(figure, path)


def plot_multiplier(path: Path, run: Run, result: RunResult) -> None:
    """SAGE's multiplier quantiles, fraction above 1, sensitivity and variation over updates."""
    records = [r for r in result.log.train if "sage_mult_mean" in r]
    updates = [r["num_updates"] for r in records]

    def series(key: str) -> List[float]:
        return [r[key] for r in records]

    figure = Figure(figsize=(13, 4), layout="constrained")
    quantile_axes, fraction_axes, sensitivity_axes = figure.subplots(1, 3)
    quantile_axes.fill_between(updates, series("sage_mult_p10"), series("sage_mult_p90"), alpha=0.25,
                               color="tab:orange", label="p10 – p90")
    quantile_axes.plot(updates, series("sage_mult_p50"), color="tab:orange", label="median")
    quantile_axes.plot(updates, series("sage_mult_mean"), color="black", linestyle="--", label="mean")
    quantile_axes.axhline(1.0, color="gray", linewidth=0.8)
    quantile_axes.set_yscale("log")
    quantile_axes.set_title("lr multiplier m = (U + ε)/(Ī + ε)")
    quantile_axes.legend(fontsize=8)
    fraction_axes.plot(updates, series("sage_mult_frac_above_1"), color="tab:orange")
    fraction_axes.set_title("fraction of weights with m > 1")
    sensitivity_axes.plot(updates, series("sage_sensitivity_mean"), label="mean sensitivity Ī")
    sensitivity_axes.plot(updates, series("sage_variation_mean"), label="mean local variation U")
    sensitivity_axes.set_yscale("log")
    sensitivity_axes.set_title("sensitivity |θ·g| and its variation")
    sensitivity_axes.legend(fontsize=8)
    for axes in (quantile_axes, fraction_axes, sensitivity_axes):
        axes.set_xlabel("updates")
        axes.grid(True, alpha=0.3)
    figure.suptitle(f"{setting_label(run)}, seed {run.seed}: the next update's values, every log line",
                    fontsize=10)
    save(figure, path)


def plot_grid(path: Path, settings: StudySettings, results: Dict[Run, RunResult]) -> None:
    """Heatmap of Adam-SAGE's validation BLEU over beta0 × lr, and validation BLEU against lr."""
    grid = grid_runs(settings)
    bleu = {run.setting: results[run].valid_bleu for run in grid}
    sage_lrs = sorted(settings.sage_lrs, key=float)
    beta0s = sorted(settings.sage_beta0s, key=float)
    table = [[bleu[("adam_sage", lr, b)] for lr in sage_lrs] for b in beta0s]
    values = [[math.nan if v is None else v for v in row] for row in table]

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    heat_axes, sweep_axes = figure.subplots(1, 2)
    finite = [v for row in values for v in row if not math.isnan(v)]
    image = heat_axes.imshow(values, cmap="viridis", origin="lower", aspect="auto")
    if finite:  # no scale to show before a run is scored
        figure.colorbar(image, ax=heat_axes, label="validation BLEU")
    heat_axes.set_xticks(range(len(sage_lrs)), sage_lrs)
    heat_axes.set_yticks(range(len(beta0s)), beta0s)
    heat_axes.set_xlabel("peak learning rate")
    heat_axes.set_ylabel("β0")
    heat_axes.set_title("Adam-SAGE: validation BLEU over β0 × lr")
    middle = (min(finite) + max(finite)) / 2 if finite else 0
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            text = "pending" if math.isnan(value) else f"{value:.2f}"
            color = "gray" if math.isnan(value) else "white" if value < middle else "black"
            heat_axes.text(j, i, text, ha="center", va="center", fontsize=9, color=color)

    shade = colormaps["Oranges"]
    lines = [("Adam", dict(marker="o", color=COLORS["adam"]), [("adam", lr, None) for lr in settings.adam_lrs])]
    for i, b in enumerate(beta0s):
        style = dict(marker="s", linestyle="--", color=shade(0.4 + 0.5 * i / max(1, len(beta0s) - 1)))
        lines.append((f"Adam-SAGE β0={b}", style, [("adam_sage", lr, b) for lr in sage_lrs]))
    for label, style, settings_of_line in lines:
        points = sorted((float(s[1]), bleu[s]) for s in settings_of_line if bleu[s] is not None)
        if points:
            sweep_axes.plot(*zip(*points), label=label, **style)
    sweep_axes.set_xscale("log")
    lrs = sorted({*settings.adam_lrs, *sage_lrs}, key=float)
    sweep_axes.set_xticks([float(lr) for lr in lrs], lrs)
    sweep_axes.minorticks_off()
    sweep_axes.set_xlabel("peak learning rate")
    sweep_axes.set_ylabel("validation BLEU")
    sweep_axes.set_title("validation BLEU against lr")
    sweep_axes.grid(True, alpha=0.3)
    sweep_axes.legend(fontsize=8)
    save(figure, path)


def plot_pruning(path: Path, curves: Dict[str, List[Dict[str, float]]], best: Dict[str, Run], subset: str) -> None:
    """BLEU against the percentage of non-embedding weights pruned, one line per optimizer."""
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axes = figure.subplots()
    for optimizer, rows in curves.items():
        axes.plot([r["prune_percent"] for r in rows], [r["bleu"] for r in rows], marker="o",
                  color=COLORS[optimizer], label=f"{setting_label(best[optimizer])} seed {best[optimizer].seed}")
    axes.set_xlabel("least sensitive non-embedding weights set to zero (%)")
    axes.set_ylabel(f"BLEU on {subset}")
    axes.set_ylim(bottom=0)
    axes.set_title("one-shot pruning by sensitivity |θ·g|")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    save(figure, path)


def draw_figures(workdir: Path) -> List[Path]:
    """Draw every figure whose data exists into WORKDIR/figures/; return their paths."""
    settings = read_settings(workdir)
    results = collect(workdir, settings)
    folder = workdir / FIGURES_DIR
    written = []
    if any(results[run].valid_bleu is not None for run in grid_runs(settings)):
        written.append(folder / "beta0_lr_heatmap.png")
        plot_grid(written[-1], settings, results)
    try:
        best = best_runs(results, settings)
    except StudyError:
        return written
    curves = {run: results[run] for b in best.values() for run in seed_runs(b, settings) if results[run].log.train}
    if curves:
        written.append(folder / "learning_curves.png")
        plot_learning_curves(written[-1], curves)
    sage = best["adam_sage"]
    if any("sage_mult_mean" in r for r in results[sage].log.train):
        written.append(folder / "sage_multiplier.png")
        plot_multiplier(written[-1], sage, results[sage])
    pruning = pruning_curves(workdir)
    if pruning:
        written.append(folder / "pruning.png")
        plot_pruning(written[-1], pruning, best, SUBSET_NAMES[settings.values["PRUNE_SUBSET"]])
    for optimizer in pruning:
        written.append(folder / f"sensitivity_{optimizer}.png")
        write_atomically(written[-1], (workdir / "analysis" / optimizer / "sensitivity_by_type.png").read_bytes())
    return written


def main(argv: Sequence[str] = None) -> int:
    return run_cli(__doc__.split("\n\n")[0], lambda args: [print(f"wrote {path}") for path in draw_figures(args.workdir)], argv)


if __name__ == "__main__":
    sys.exit(main())
