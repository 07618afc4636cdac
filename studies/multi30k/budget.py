"""The converged study's budget phase: the update budget of every later run, from the validation BLEU
curve of one long run (``python -m studies.multi30k.budget WORKDIR`` prints the budget).

The budget run (WORKDIR/runs/budget: Adam at BUDGET_LR, BUDGET_MAX_UPDATE updates) validates at each
epoch's end with fairseq's --eval-bleu. Greedy validation BLEU moves by up to a few points from one
epoch to the next, so the rule reads the curve smoothed over SMOOTH validations (the mean of each
one and the SMOOTH − 1 before it). The budget is the first validation N, with at least AVERAGE_LAST
validations up to it, where

- the best smoothed BLEU up to N exceeds the best up to (1 − BUDGET_TAIL) · N by less than
  BUDGET_MIN_GAIN (the last BUDGET_TAIL of training gains less than that), and
- the best smoothed BLEU of the whole budget run exceeds the best up to N by less than
  BUDGET_MIN_GAIN (the curve has stopped improving: no later gain of that size).

(Without the smoothing and the second condition, a dip at the 5th of 20 epochs made the first
version of this rule stop at 650 updates, 10 BLEU below where the run ended.) Writes
WORKDIR/budget.json (the curve, each point's gains, the rule and the budget) and
WORKDIR/figures/budget.png.
"""

import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from matplotlib.figure import Figure

from .plots import FIGURES_DIR, save
from .settings import BUDGET_FILE, StudyError, StudySettings, read_settings, run_cli, write_if_changed
from .train_log import read_train_log

Point = Tuple[float, float]  # (updates, validation BLEU)

SMOOTH = 3
"""Validations in the trailing mean the rule reads."""


def smoothed(points: Sequence[Point], window: int = SMOOTH) -> List[Point]:
    """Each point's BLEU replaced by the mean of its own and the ``window`` − 1 before it (fewer at the start)."""
    curve = []
    for i, (step, _) in enumerate(points):
        recent = [bleu for _, bleu in points[max(0, i - window + 1): i + 1]]
        curve.append((step, sum(recent) / len(recent)))
    return curve


def tail_gain(points: Sequence[Point], index: int, tail: float) -> Optional[float]:
    """Best BLEU of points[: index + 1] minus the best of those at or before (1 − tail) · updates;
    None when no point lies that early."""
    updates = points[index][0]
    before = [bleu for step, bleu in points if step <= (1 - tail) * updates]
    if not before:
        return None
    return max(bleu for _, bleu in points[: index + 1]) - max(before)


def later_gain(points: Sequence[Point], index: int) -> float:
    """Best BLEU of all ``points`` minus the best of points[: index + 1]: what came after."""
    return max(bleu for _, bleu in points) - max(bleu for _, bleu in points[: index + 1])


def choose_budget(points: Sequence[Point], tail: float, min_gain: float, min_points: int,
                  window: int = SMOOTH) -> Optional[int]:
    """The first point's updates (from the ``min_points``-th on) where, on the curve :func:`smoothed`
    over ``window`` validations, both :func:`tail_gain` and :func:`later_gain` are < ``min_gain``."""
    curve = smoothed(points, window)
    for index in range(min_points - 1, len(curve)):
        gain = tail_gain(curve, index, tail)
        if gain is not None and gain < min_gain and later_gain(curve, index) < min_gain:
            return int(curve[index][0])
    return None


def budget_folder(workdir: Path) -> Path:
    return workdir / "runs" / "budget"


def budget_points(workdir: Path) -> List[Point]:
    log = read_train_log(budget_folder(workdir) / "checkpoints" / "adam" / "train.log")
    return [(r["num_updates"], r["bleu"]) for r in log.valid if "bleu" in r]


def plot_budget(path: Path, points: Sequence[Point], budget: int, settings: StudySettings) -> None:
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axes = figure.subplots()
    axes.plot(*zip(*points), marker="o", color="tab:blue", label=f"Adam lr={settings.values['BUDGET_LR']}")
    axes.plot(*zip(*smoothed(points)), color="tab:orange", label=f"mean of {SMOOTH} validations (the rule's curve)")
    axes.axvline(budget, color="gray", linestyle="--", label=f"budget: {budget} updates")
    axes.set_xlabel("updates")
    axes.set_ylabel("validation BLEU (fairseq --eval-bleu, greedy)")
    axes.set_title("budget phase: validation BLEU at each epoch's end")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    save(figure, path)


def decide(workdir: Path) -> int:
    settings = read_settings(workdir)
    values = settings.values
    tail, min_gain = float(values["BUDGET_TAIL"]), float(values["BUDGET_MIN_GAIN"])
    points = budget_points(workdir)
    budget = choose_budget(points, tail, min_gain, settings.integer("AVERAGE_LAST"))
    if budget is None:
        raise StudyError(
            f"the budget run's smoothed validation BLEU still gained >= {min_gain} over the last {tail:.0%} or "
            f"later at each of its {len(points)} validations; raise BUDGET_MAX_UPDATE (now "
            f"{values['BUDGET_MAX_UPDATE']}) or use another WORKDIR")
    curve = smoothed(points)
    record = {
        "rule": f"first validation N (at least AVERAGE_LAST={values['AVERAGE_LAST']} validations up to it) "
                f"where, on the BLEU curve averaged over each {SMOOTH} consecutive validations, best up to N − "
                f"best up to {1 - tail:g}·N < {min_gain} and best of the whole run − best up to N < {min_gain}",
        "run": {"optimizer": "adam", "lr": values["BUDGET_LR"], "max_update": int(values["BUDGET_MAX_UPDATE"])},
        "points": [{"updates": int(step), "bleu": bleu, "smoothed_bleu": curve[i][1],
                    "tail_gain": tail_gain(curve, i, tail), "later_gain": later_gain(curve, i)}
                   for i, (step, bleu) in enumerate(points)],
        "budget": budget,
    }  # fmt: skip
    write_if_changed(workdir / BUDGET_FILE, json.dumps(record, indent=2) + "\n")
    plot_budget(workdir / FIGURES_DIR / "budget.png", points, budget, settings)
    return budget


def main(argv: Sequence[str] = None) -> int:
    return run_cli(__doc__.split("\n\n")[0], lambda args: print(decide(args.workdir)), argv)


if __name__ == "__main__":
    sys.exit(main())
