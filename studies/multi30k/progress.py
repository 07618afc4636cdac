"""The converged study's time estimate and progress file (WORKDIR/progress.md).

    python -m studies.multi30k.progress WORKDIR [--estimate]

Writes WORKDIR/progress.md (runs done / remaining, the ETA); with ``--estimate`` also prints the
estimate. Rates: this study's own finished runs once there are any, before that the constants
below, for a 2-core CPU.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .plan import edge, widened_lrs
from .results import best_runs, collect, rank
from .runs import LABELS, OPTIMIZERS, Run, grid_runs, seed_runs
from .settings import StudyError, StudySettings, read_settings, run_cli, write_atomically
from .train_log import read_train_log

# Sizing on an idle 2-core CPU. The quickstart (recipes/multi30k/README.md) trains at 6.1k target
# tokens/s with two threads; a 4,096-token batch of Multi30k holds about 3,380 target tokens
# (fairseq's wpb, measured), so one update takes 3,380 / 6,100 ≈ 0.55 s; the full training set is
# 130 such batches per epoch. Measured on this project's shared 2-core machine with other jobs
# running: 2,234 target tokens/s (2 threads, 1 process), 0.24–0.29 updates/s per process with two
# processes of one thread each, i.e. about the same total: JOBS=2 costs nothing and shields a run
# from the other's stalls.
SECONDS_PER_UPDATE = 0.55
UPDATES_PER_EPOCH = 130
SECONDS_PER_VALIDATION = 8  # per epoch: validation loss and greedy --eval-bleu on the 1,014 val pairs
SECONDS_PER_DECODE = 10  # beam 5 over a set of about 1,000 sentences, start-up included (quickstart)
SECONDS_PER_RUN = 15  # start-up, the last checkpoints, averaging
EXPECTED_BUDGET = 1500  # until the budget phase has chosen (the issue expects 1,000–2,000)
PROGRESS_FILE = "progress.md"


@dataclass(frozen=True)
class Planned:
    """One training run of the plan, with the beam searches that follow it."""

    name: str
    folder: Path
    optimizer: str
    updates: int
    decodes: int

    @property
    def done(self) -> bool:
        return (self.folder / ".steps" / f"{self.name}.train.done").is_file()

    @property
    def updates_done(self) -> int:
        log = read_train_log(self.folder / "checkpoints" / self.optimizer / "train.log")
        return int(max((r["num_updates"] for r in log.train + log.valid), default=0))


def budget_of(settings: StudySettings) -> Optional[int]:
    value = settings.values["MAX_UPDATE"]
    return None if value == "budget" else int(value)


def budget_runs(settings: StudySettings) -> int:
    """1 with a budget phase, 0 where BUDGET gave the budget."""
    return 0 if settings.values.get("BUDGET") else 1


def pruning_decodes(settings: StudySettings) -> int:
    """The beam searches of the pruning curves: every seed's averaged model at each PRUNE_LEVELS level."""
    return len(OPTIMIZERS) * len(settings.seeds) * len(settings.values["PRUNE_LEVELS"].split(","))


def planned_runs(workdir: Path, settings: StudySettings) -> List[Planned]:
    """The budget run, the grid (as widened so far) and the seeds (placeholders until selection)."""
    budget = budget_of(settings) or EXPECTED_BUDGET
    runs = [Planned("budget", workdir / "runs" / "budget", "adam", settings.integer("BUDGET_MAX_UPDATE"), 0)
            for _ in range(budget_runs(settings))]
    runs += [Planned(run.name, run.folder(workdir), run.optimizer, budget, 1) for run in grid_runs(settings)]
    try:
        best = best_runs(collect(workdir, settings), settings)
    except StudyError:  # the seeds are known once the grid is scored
        count = len(OPTIMIZERS) * (len(settings.seeds) - 1)
        return runs + [Planned(f"seed run {i + 1} (after the grid)", workdir / "runs" / "pending", "adam", budget, 1)
                       for i in range(count)]
    seeds: List[Run] = [run for b in best.values() for run in seed_runs(b, settings)[1:]]
    return runs + [Planned(run.name, run.folder(workdir), run.optimizer, budget, 1) for run in seeds]


def seconds_per_update(workdir: Path, settings: StudySettings) -> float:
    """Wall seconds per update of this study's finished runs (validations included), per process;
    before any, the constants (for the whole machine, whatever JOBS)."""
    results = [r for r in collect(workdir, settings).values() if r.finished and r.updates and r.wall_seconds]
    if results:
        return sum(r.wall_seconds for r in results) / sum(r.updates for r in results) / settings.integer("JOBS")
    return SECONDS_PER_UPDATE + SECONDS_PER_VALIDATION / UPDATES_PER_EPOCH


def remaining_seconds(workdir: Path, settings: StudySettings) -> float:
    rate = seconds_per_update(workdir, settings)
    seconds = 0.0
    for run in planned_runs(workdir, settings):
        if not run.done:
            seconds += (run.updates - run.updates_done) * rate + SECONDS_PER_RUN
            seconds += run.decodes * SECONDS_PER_DECODE
    tests = len(OPTIMIZERS) * len(settings.seeds) * 2 * 2  # both models on both test sets
    pruning = pruning_decodes(settings)
    if not (workdir / ".steps" / "report.done").is_file():
        seconds += (tests + pruning) * SECONDS_PER_DECODE
    return seconds


def likely_widenings(workdir: Path, settings: StudySettings) -> List[Tuple[Run, str]]:
    """Each optimizer's best grid run scored so far, with its edge, where its lr is an edge of the grid
    that may still widen (:func:`studies.multi30k.plan.edge`): the grid gains an lr beyond it unless a
    run still training beats it. The time left does not count these runs, which are not planned yet."""
    results = collect(workdir, settings)
    widened = widened_lrs(workdir)
    likely = []
    for optimizer in OPTIMIZERS:
        scored = [run for run in grid_runs(settings) if run.optimizer == optimizer and results[run].valid_bleu is not None]
        best = max(scored, key=lambda run: rank(results[run]), default=None)
        side = edge(best, settings, widened) if best is not None else None
        if side:
            likely.append((best, side))
    return likely


def widening_note(workdir: Path, settings: StudySettings) -> Optional[str]:
    """The progress line on :func:`likely_widenings`, None where there are none."""
    likely = likely_widenings(workdir, settings)
    if not likely:
        return None
    edges = " and ".join(f"the {side} of {LABELS[run.optimizer]}'s grid (lr {run.lr})" for run, side in likely)
    added = [1 if run.optimizer == "adam" else len(settings.sage_beta0s) for run, _ in likely]
    runs = " and ".join(f"{count} to {LABELS[run.optimizer]}'s" for count, (run, _) in zip(added, likely))
    hours = (budget_of(settings) or EXPECTED_BUDGET) * seconds_per_update(workdir, settings) / 3600
    return (f"not counted yet: the best lr scored so far is {edges}; widening adds {runs} "
            f"({'a training run' if sum(added) == 1 else 'training runs'} of about {hours:.1f} h at this rate)")


def estimate(settings: StudySettings) -> str:
    """The whole study's size and duration on an idle 2-core CPU, from the constants."""
    grid = len(grid_runs(settings))
    seeds = len(OPTIMIZERS) * (len(settings.seeds) - 1)
    budget = budget_of(settings) or EXPECTED_BUDGET
    phase = budget_runs(settings)
    updates = phase * settings.integer("BUDGET_MAX_UPDATE") + (grid + seeds) * budget
    rate = SECONDS_PER_UPDATE + SECONDS_PER_VALIDATION / UPDATES_PER_EPOCH
    decodes = grid + seeds + len(OPTIMIZERS) * len(settings.seeds) * 4 + pruning_decodes(settings)
    runs = phase + grid + seeds
    seconds = updates * rate + decodes * SECONDS_PER_DECODE + runs * SECONDS_PER_RUN
    widening = (1 + len(settings.sage_beta0s)) * (budget * rate + SECONDS_PER_DECODE + SECONDS_PER_RUN)
    chosen = "" if budget_of(settings) else f" (the budget is not chosen yet: {EXPECTED_BUDGET} assumed)"
    first = (f"1 budget run of {settings.integer('BUDGET_MAX_UPDATE'):,} updates + " if phase else "")
    each = f"{budget:,} updates each after the budget run" if phase else f"{budget:,} updates each (BUDGET)"
    return (
        f"{first}{grid} grid runs + {seeds} more "
        f"seeds = {runs} training runs, {each}{chosen}: {updates:,} "
        f"updates × {rate:.2f} s (with the validation at each epoch's end) + {decodes} beam searches × "
        f"{SECONDS_PER_DECODE} s + {runs} × {SECONDS_PER_RUN} s (start-up, averaging) ≈ "
        f"**{seconds / 3600:.1f} h** on an idle 2-core CPU; widening Adam's grid once adds 1 run, "
        f"Adam-SAGE's {len(settings.sage_beta0s)}, ≈ {widening / 3600:.1f} h for both (at most "
        f"MAX_WIDEN={settings.values['MAX_WIDEN']} times each). On a machine busy with other jobs, "
        "expect about 3× longer (2,234 instead of 6,100 target tokens/s measured here)."
    )


def progress(workdir: Path) -> str:
    settings = read_settings(workdir)
    runs = planned_runs(workdir, settings)
    done = [run for run in runs if run.done]
    left = remaining_seconds(workdir, settings)
    eta = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + left))
    lines = [f"# Progress of {workdir}", "", f"Updated {time.strftime('%Y-%m-%d %H:%M:%S')}.", "",
             f"- training runs done: {len(done)} of {len(runs)}; remaining: {len(runs) - len(done)}",
             f"- time left: about {left / 3600:.1f} h (ETA {eta}), at "
             f"{seconds_per_update(workdir, settings):.2f} s per update"]
    note = widening_note(workdir, settings)
    lines += [f"- {note}"] if note else []
    lines += [f"- estimate: {estimate(settings)}", "", "| run | state | updates |", "| --- | --- | --- |"]
    for run in runs:
        state = "done" if run.done else "pending"
        updates = run.updates_done
        if not run.done and updates:
            state = "running or interrupted"
        lines.append(f"| {run.name} | {state} | {updates} / {run.updates} |")
    return "\n".join(lines) + "\n"


def report_progress(args) -> None:
    text = progress(args.workdir)
    write_atomically(args.workdir / PROGRESS_FILE, text.encode())
    if args.estimate:
        print(f"[multi30k-converged] estimate: {estimate(read_settings(args.workdir))}")
        print(f"[multi30k-converged] {text.splitlines()[4][2:]}; {text.splitlines()[5][2:]}")


def main(argv: Sequence[str] = None) -> int:
    return run_cli(__doc__.split("\n\n")[0], report_progress, argv, lambda parser: parser.add_argument(
        "--estimate", action="store_true", help="also print the time estimate"))


if __name__ == "__main__":
    sys.exit(main())
