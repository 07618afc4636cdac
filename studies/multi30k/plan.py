"""What run_study.sh runs next, one run per line: ``NAME OPTIMIZER LR BETA0 SEED`` (BETA0 ``-`` for Adam).

    python -m studies.multi30k.plan grid WORKDIR      the grid runs (first seed)
    python -m studies.multi30k.plan final WORKDIR     every seed of each optimizer's best setting;
                                                      writes WORKDIR/selection.json
    python -m studies.multi30k.plan pruning WORKDIR   each optimizer's best first-seed run

``final`` and ``pruning`` need every grid run's validation BLEU.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from .results import SELECTION_RULE, best_runs, read_run
from .runs import LABELS, Run, grid_runs, seed_runs
from .settings import StudyError, StudySettings, read_settings, write_if_changed

SELECTION_FILE = "selection.json"


def select(workdir: Path, settings: StudySettings) -> Dict[str, Run]:
    """Each optimizer's best grid run; records the choice in WORKDIR/selection.json."""
    results = {run: read_run(workdir, run) for run in grid_runs(settings)}
    best = best_runs(results, settings)
    selection = {"rule": SELECTION_RULE}
    for optimizer, run in best.items():
        selection[optimizer] = {
            "run": run.name, "lr": run.lr, "beta0": run.beta0,
            "valid_bleu": results[run].valid_bleu, "best_valid_loss": results[run].best_valid_loss,
        }  # fmt: skip
    write_if_changed(workdir / SELECTION_FILE, json.dumps(selection, indent=2) + "\n")
    return best


def describe(run: Run) -> str:
    beta0 = f" beta0={run.beta0}" if run.beta0 is not None else ""
    return f"{LABELS[run.optimizer]} lr={run.lr}{beta0}"


def line(run: Run) -> str:
    return f"{run.name} {run.optimizer} {run.lr} {run.beta0 or '-'} {run.seed}"


def planned_runs(stage: str, workdir: Path) -> List[Run]:
    settings = read_settings(workdir)
    if stage == "grid":
        return grid_runs(settings)
    best = select(workdir, settings)
    if stage == "pruning":
        return list(best.values())
    print(f"[multi30k-study] best by validation BLEU: {'; '.join(map(describe, best.values()))}",
          file=sys.stderr)
    return [run for best_run in best.values() for run in seed_runs(best_run, settings)]


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("grid", "final", "pruning"))
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)
    try:
        runs = planned_runs(args.stage, args.workdir)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(map(line, runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
