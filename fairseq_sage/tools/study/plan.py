"""What a study trains: the runs of each optimizer's grid (first seed), the widening of an axis whose
best value lies at an edge, the selection of each optimizer's best setting, its seeds, the best seed
pair, and the budget rule. Everything here is a function of the configuration and the records."""

import itertools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .config import Study

Setting = Tuple[Tuple[str, float], ...]  # ((axis, value), ...) in the grid's axis order


def number(value: float) -> str:
    """A grid value as people write it: 6e-3, 1.2e-2, 0.6, 2340."""
    if value == int(value) and (abs(value) >= 1 or value == 0):
        return str(int(value))
    if abs(value) >= 0.1:
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    return f"{float(f'{value / 10 ** exponent:.6g}'):g}e{exponent}"


@dataclass(frozen=True)
class Run:
    optimizer: str
    setting: Setting
    seed: int

    @property
    def name(self) -> str:
        axes = "".join(f"-{axis}={number(value)}" for axis, value in self.setting)
        return f"{self.optimizer}{axes}-seed={self.seed}"

    def flags(self) -> List[str]:
        """The fairseq-train flags of the setting and seed (axis ``sage_beta0`` -> ``--sage-beta0``)."""
        flags = [f for axis, value in self.setting for f in ("--" + axis.replace("_", "-"), repr(value))]
        return flags + ["--seed", str(self.seed)]


def grid_runs(study: Study, grids: Dict[str, Dict[str, List[float]]], incumbents: bool = True) -> List[Run]:
    """Every setting of every optimizer's grid, then (unless ``incumbents`` is false) its incumbents
    not in the grid, with the first seed."""
    runs = []
    for optimizer, grid in grids.items():
        for values in itertools.product(*grid.values()):
            runs.append(Run(optimizer, tuple(zip(grid, values)), study.selection.seeds[0]))
        for setting in study.optimizers[optimizer].incumbents if incumbents else []:
            run = Run(optimizer, tuple((axis, setting[axis]) for axis in grid), study.selection.seeds[0])
            runs += [] if run in runs else [run]
    return runs


def is_incumbent(study: Study, run: Run) -> bool:
    return dict(run.setting) in study.optimizers[run.optimizer].incumbents


def initial_grids(study: Study) -> Dict[str, Dict[str, List[float]]]:
    return {name: {axis: sorted(values) for axis, values in opt.grid.items()} for name, opt in study.optimizers.items()}


def best(runs: Sequence[Run], score: Dict[Run, Optional[float]], loss: Dict[Run, float]) -> Run:
    """The run of highest score; ties go to the lower best validation loss."""
    return max(runs, key=lambda run: (score[run], -loss[run]))


def select(study: Study, grids, score, loss, incumbents: bool = True) -> Dict[str, Run]:
    """Each optimizer's best grid run (among the grid's own settings where ``incumbents`` is false)."""
    runs = grid_runs(study, grids, incumbents)
    return {opt: best([r for r in runs if r.optimizer == opt], score, loss) for opt in study.optimizers}


def beyond(values: List[float], edge: float, limits: Optional[List[float]]) -> float:
    """The value one grid step beyond ``edge`` (an end of the sorted ``values``; the step: the gap to its
    neighbour), kept inside ``limits`` (else halfway to the limit) and, for positive axes, above 0."""
    top = edge == values[-1]
    step = values[-1] - values[-2] if top else values[1] - values[0]
    value = edge + step if top else edge - step
    low, high = limits if limits else (0.0, math.inf)
    low = max(low, 0.0) if values[0] > 0 else low
    if value <= low or value >= high:
        value = (edge + (high if top else low)) / 2
    return float(f"{value:.6g}")


def widen(study: Study, grids, chosen: Dict[str, Run]) -> Dict[str, Dict[str, List[float]]]:
    """The grids with one value added beyond each axis whose best value (``chosen``: each grid's own best,
    incumbents aside) is at an edge, while the axis has gained fewer than selection.max_widen values; the
    same grids where none is."""
    wider = {opt: {axis: list(values) for axis, values in grid.items()} for opt, grid in grids.items()}
    for opt, run in chosen.items():
        config = study.optimizers[opt]
        for axis, value in run.setting:
            values = grids[opt][axis]
            at_edge = len(values) > 1 and value in (values[0], values[-1])  # a one-value axis is fixed
            if at_edge and len(values) - len(config.grid[axis]) < study.selection.max_widen:
                wider[opt][axis] = sorted(values + [beyond(values, value, config.limits.get(axis))])
    return wider


def seed_runs(study: Study, run: Run) -> List[Run]:
    return [Run(run.optimizer, run.setting, seed) for seed in study.selection.seeds]


def final_runs(study: Study, chosen: Dict[str, Run]) -> List[Run]:
    """Every seed of each best setting, the optimizers alternating (runs trained at once pair one of each)."""
    seeds = [seed_runs(study, run) for run in chosen.values()]
    return [run for same_seed in itertools.zip_longest(*seeds) for run in same_seed if run is not None]


def budget_run(study: Study) -> Optional[Run]:
    rule = study.train.budget_rule
    return Run(rule.optimizer, tuple(rule.setting.items()), study.selection.seeds[0]) if rule else None


def budget_from_curve(curve: List[dict], rule) -> Dict[str, object]:
    """The first validation N whose smoothed BLEU (mean of it and the ``smooth`` − 1 before it) exceeds
    the best smoothed BLEU up to (1 − tail) · N by less than ``min_gain``; the last validation if none."""
    points = [(row["num_updates"], row["bleu"]) for row in curve if "bleu" in row]
    smoothed = [(u, sum(b for _, b in points[max(0, i - rule.smooth + 1):i + 1]) / len(points[max(0, i - rule.smooth + 1):i + 1]))
                for i, (u, _) in enumerate(points)]
    for i, (updates, bleu) in enumerate(smoothed):
        earlier = [b for u, b in smoothed[:i] if u <= (1 - rule.tail) * updates]
        if i >= rule.smooth and earlier and bleu - max(earlier) < rule.min_gain:
            return {"budget": int(updates), "smoothed": smoothed}
    return {"budget": int(smoothed[-1][0]), "smoothed": smoothed}
