"""What run_study.sh runs next, one run per line: ``NAME OPTIMIZER LR BETA0 SEED`` (BETA0 ``-`` for Adam).

    python -m studies.multi30k.plan grid WORKDIR      the grid runs (first seed)
    python -m studies.multi30k.plan final WORKDIR     every seed of each optimizer's best setting;
                                                      writes WORKDIR/selection.json
    python -m studies.multi30k.plan pruning WORKDIR   each optimizer's best first-seed run
    python -m studies.multi30k.plan pair WORKDIR      each optimizer's seed of highest validation BLEU
                                                      at its best setting (Adam's first)
    python -m studies.multi30k.plan widen WORKDIR     the runs of the lrs added where a best grid run
                                                      lies at an edge of its lrs (none: done)

``final``, ``pruning``, ``pair`` and ``widen`` need every grid run's validation BLEU. ``widen`` adds, per
optimizer whose best lr is the highest (lowest) of its grid, one lr a grid step above (below; half
the lowest if that is not positive), at most MAX_WIDEN times per optimizer, and records them in
WORKDIR/widened.json (read_settings adds them to ADAM_LRS / SAGE_LRS).
"""

import argparse
import json
import sys
from itertools import zip_longest
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .results import best_runs, read_run, selection_rule
from .runs import LABELS, Run, grid_runs, seed_runs
from .settings import WIDENED_FILE, StudyError, StudySettings, read_json, read_settings, write_if_changed

SELECTION_FILE = "selection.json"
LR_KEYS = {"adam": "ADAM_LRS", "adam_sage": "SAGE_LRS"}


def select(workdir: Path, settings: StudySettings) -> Dict[str, Run]:
    """Each optimizer's best grid run; records the choice in WORKDIR/selection.json."""
    results = {run: read_run(workdir, run, settings.selection_model) for run in grid_runs(settings)}
    best = best_runs(results, settings)
    selection = {"rule": selection_rule(settings.selection_model)}
    for optimizer, run in best.items():
        selection[optimizer] = {
            "run": run.name, "lr": run.lr, "beta0": run.beta0,
            "valid_bleu": results[run].valid_bleu, "best_valid_loss": results[run].best_valid_loss,
        }  # fmt: skip
    write_if_changed(workdir / SELECTION_FILE, json.dumps(selection, indent=2) + "\n")
    return best


def lr_name(value: float) -> str:
    """A learning rate as the settings write it: 1.6e-2, 8e-3."""
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def next_lr(lrs: List[str], best: str) -> str:
    """The lr one grid step beyond ``best``, an edge of ``lrs`` (the step: the gap to its neighbour)."""
    values = sorted(float(lr) for lr in lrs)
    if float(best) == values[-1]:
        return lr_name(2 * values[-1] - values[-2] if len(values) > 1 else 2 * values[-1])
    step = values[1] - values[0] if len(values) > 1 else values[0] / 2
    return lr_name(values[0] - step if values[0] - step > 0 else values[0] / 2)


def widened_lrs(workdir: Path) -> Dict[str, List[str]]:
    """The lrs widening added so far, by settings key (WORKDIR/widened.json)."""
    path = workdir / WIDENED_FILE
    return read_json(path) if path.is_file() else {}


def edge(run: Run, settings: StudySettings, widened: Dict[str, List[str]]) -> Optional[str]:
    """"top" or "bottom" where ``run``'s lr is the highest or lowest of its optimizer's grid and
    MAX_WIDEN allows one more lr beyond it, else None."""
    key = LR_KEYS[run.optimizer]
    if len(widened.get(key, [])) >= settings.integer("MAX_WIDEN"):
        return None
    lrs = [float(lr) for lr in settings.words(key)]
    return {min(lrs): "bottom", max(lrs): "top"}.get(float(run.lr))


def widen(workdir: Path, settings: StudySettings) -> List[Run]:
    """The new grid runs of the lrs added where a best run lies at an edge; records them in widened.json."""
    best = select(workdir, settings)
    widened = widened_lrs(workdir)
    added = [(LR_KEYS[opt], run) for opt, run in best.items() if edge(run, settings, widened)]
    if not added:
        return []
    for key, run in added:
        widened.setdefault(key, []).append(next_lr(list(settings.words(key)), run.lr))
    write_if_changed(workdir / WIDENED_FILE, json.dumps(widened, indent=2) + "\n")
    wider = read_settings(workdir)
    return [run for run in grid_runs(wider) if run not in grid_runs(settings)]


def best_seeds(workdir: Path, settings: StudySettings) -> List[Run]:
    """Each optimizer's run of highest validation BLEU among the seeds of its best setting."""
    model = settings.selection_model
    runs = []
    for best in select(workdir, settings).values():
        results = [read_run(workdir, run, model) for run in seed_runs(best, settings)]
        pending = [r.run.name for r in results if r.valid_bleu is None]
        if pending:
            raise StudyError(f"no validation BLEU yet for {', '.join(pending)}; run the study's seeds first")
        runs.append(max(results, key=lambda r: r.valid_bleu).run)
    return runs


def describe(run: Run) -> str:
    beta0 = f" beta0={run.beta0}" if run.beta0 is not None else ""
    return f"{LABELS[run.optimizer]} lr={run.lr}{beta0}"


def line(run: Run) -> str:
    return f"{run.name} {run.optimizer} {run.lr} {run.beta0 or '-'} {run.seed}"


def planned_runs(stage: str, workdir: Path) -> List[Run]:
    settings = read_settings(workdir)
    if stage == "grid":
        return grid_runs(settings)
    if stage == "widen":
        return widen(workdir, settings)
    if stage == "pair":
        return best_seeds(workdir, settings)
    best = select(workdir, settings)
    if stage == "pruning":
        return list(best.values())
    print(f"[multi30k-study] best by validation BLEU: {'; '.join(map(describe, best.values()))}",
          file=sys.stderr)
    # the optimizers' seeds alternate, so that runs trained at the same time (JOBS=2) pair one of
    # each and their wall times and words/s are measured under the same load
    seeds = [seed_runs(best_run, settings) for best_run in best.values()]
    return [run for same_seed in zip_longest(*seeds) for run in same_seed if run is not None]


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("grid", "final", "pruning", "pair", "widen"))
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)
    try:
        runs = planned_runs(args.stage, args.workdir)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if runs:
        print("\n".join(map(line, runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
