"""Every run's numbers, the choice of each optimizer's best setting, and mean ± std over seeds."""

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .runs import OPTIMIZERS, TEST_SETS, Run, grid_runs, seed_runs
from .settings import BEST_MODEL, StudyError, StudySettings
from .train_log import TrainingLog, read_train_log


def selection_rule(model: str = BEST_MODEL) -> str:
    return (f"highest validation BLEU (sacreBLEU of {model}.pt on `val`, beam 5) "
            "among the grid runs; ties go to the lower best validation loss")



@dataclass
class RunResult:
    """What one run produced so far; None where a step has not run yet."""

    run: Run
    log: TrainingLog
    finished: bool  # train.sh marked the training done, or the study's step did (a run restored from its record)
    valid_bleu: Optional[float] = None
    test_bleu: Dict[str, Optional[float]] = field(default_factory=dict)

    @property
    def best_valid_loss(self) -> Optional[float]:
        """The lowest validation loss (label-smoothed cross-entropy, bits per target token)."""
        return min((r["loss"] for r in self.log.valid), default=None)

    @property
    def final_train_loss(self) -> Optional[float]:
        """The train loss of the last epoch line (averaged over that epoch's updates)."""
        return self.log.epochs[-1]["loss"] if self.log.epochs else None

    @property
    def updates(self) -> Optional[int]:
        records = self.log.train + self.log.valid + self.log.epochs
        return int(max(r["num_updates"] for r in records)) if records else None

    @property
    def wall_seconds(self) -> Optional[float]:
        """Wall-clock seconds of the run's fairseq-train processes (:attr:`TrainingLog.wall_seconds`)."""
        return self.log.wall_seconds if self.log.process_seconds else None

    def row(self) -> Dict[str, object]:
        """The run as one flat table row."""
        return {
            "run": self.run.name, "optimizer": self.run.optimizer, "lr": self.run.lr,
            "beta0": self.run.beta0, "seed": self.run.seed, "finished": self.finished,
            "updates": self.updates, "valid_bleu": self.valid_bleu,
            "best_valid_loss": self.best_valid_loss, "final_train_loss": self.final_train_loss,
            **{f"bleu_{test}": self.test_bleu.get(test) for test in TEST_SETS},
            "wall_seconds": self.wall_seconds,
        }  # fmt: skip


def read_bleu(path: Path) -> Optional[float]:
    """The score of a ``sacrebleu --format json`` file; None if the file does not exist."""
    if not path.is_file():
        return None
    try:
        return float(json.loads(path.read_text())["score"])
    except (ValueError, KeyError, TypeError) as error:
        raise StudyError(
            f"{path}: not a sacreBLEU JSON result ({error}); delete it and run the study again") from None


def read_signature(workdir: Path, runs: Sequence[Run]) -> Optional[str]:
    """The sacreBLEU signature of the first BLEU file found among ``runs``."""
    for run in runs:
        for subset in ("valid", *TEST_SETS):
            path = run.bleu_file(workdir, subset)
            if path.is_file():
                return json.loads(path.read_text()).get("signature")
    return None


def read_run(workdir: Path, run: Run, model: str = BEST_MODEL) -> RunResult:
    """Everything ``run``'s folder holds: training log, validation and test BLEU of ``model``."""
    folder = run.folder(workdir)
    markers = (folder / "checkpoints" / run.optimizer / "train.done", folder / ".steps" / f"{run.name}.train.done")
    return RunResult(
        run=run,
        log=read_train_log(run.train_log(workdir)),
        finished=any(marker.is_file() for marker in markers),
        valid_bleu=read_bleu(run.bleu_file(workdir, "valid", model)),
        test_bleu={test: read_bleu(run.bleu_file(workdir, test, model)) for test in TEST_SETS},
    )


def rank(result: RunResult) -> tuple:
    """The selection's order of scored runs: validation BLEU, then the lower best validation loss."""
    loss = result.best_valid_loss
    return (result.valid_bleu, -(math.inf if loss is None else loss))


def best_runs(results: Dict[Run, RunResult], settings: StudySettings) -> Dict[str, Run]:
    """Each optimizer's grid run of highest validation BLEU (ties: lower best validation loss).

    Raises StudyError, naming them, if some grid runs have no validation BLEU yet."""
    grid = grid_runs(settings)
    pending = [run.name for run in grid if results[run].valid_bleu is None]
    if pending:
        raise StudyError(f"no validation BLEU yet for {', '.join(pending)}; run the study's grid first")
    return {opt: max((run for run in grid if run.optimizer == opt), key=lambda run: rank(results[run]))
            for opt in OPTIMIZERS}


def collect(workdir: Path, settings: StudySettings) -> Dict[Run, RunResult]:
    """The results of every grid run and, once the grid is scored, of every seed of the best settings."""
    model = settings.selection_model
    results = {run: read_run(workdir, run, model) for run in grid_runs(settings)}
    try:
        best = best_runs(results, settings)
    except StudyError:
        return results
    for run in best.values():
        for seeded in seed_runs(run, settings):
            results.setdefault(seeded, read_run(workdir, seeded, model))
    return results


def mean_and_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (n − 1); std is None for fewer than two values."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) >= 2 else None,
    }


def seed_summary(results: Dict[Run, RunResult], best: Run, settings: StudySettings) -> Dict[str, object]:
    """Test BLEU of ``best``'s setting over the study's seeds: per seed, mean and std per test set."""
    runs = seed_runs(best, settings)
    summary: Dict[str, object] = {
        "optimizer": best.optimizer, "lr": best.lr, "beta0": best.beta0,
        "valid_bleu": results[best].valid_bleu, "seeds": [run.seed for run in runs],
    }  # fmt: skip
    for test in TEST_SETS:
        scores = {run.seed: results[run].test_bleu.get(test) for run in runs if run in results}
        finished = [score for score in scores.values() if score is not None]
        summary[test] = {"per_seed": scores, **mean_and_std(finished), "complete": len(finished) == len(runs)}
    return summary


def compare(adam: Dict[str, object], sage: Dict[str, object]) -> Dict[str, float]:
    """Adam-SAGE's mean minus Adam's, and the standard error of that difference
    sqrt(s_a²/n_a + s_s²/n_s) (None when either has fewer than two seeds)."""
    difference = sage["mean"] - adam["mean"]
    if adam["std"] is None or sage["std"] is None:
        return {"difference": difference, "standard_error": None}
    error = math.sqrt(adam["std"] ** 2 / adam["n"] + sage["std"] ** 2 / sage["n"])
    return {"difference": difference, "standard_error": error}


def read_pruning(path: Path) -> Optional[List[Dict[str, float]]]:
    """The rows of a pruning_bleu.csv (python -m fairseq_sage.analysis), None where it does not exist."""
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def pruning_curves(workdir: Path) -> Dict[str, List[Dict[str, float]]]:
    """The pruning_bleu.csv rows of each optimizer's analysis (WORKDIR/analysis/OPTIMIZER)."""
    curves = {optimizer: read_pruning(workdir / "analysis" / optimizer / "pruning_bleu.csv") for optimizer in OPTIMIZERS}
    return {optimizer: rows for optimizer, rows in curves.items() if rows is not None}
