"""``fairseq-sage-study plan|run|status|report CONFIG``: a whole optimizer study from one TOML file
(docs/study.md).

  plan    the runs the study trains and their cost, before running
  run     run or resume it (what is recorded is not run again; a killed training resumes from its
          last checkpoint); --jobs N runs at once, --slurm PARTITION sends them to a cluster
  status  the runs recorded and the progress of those training
  report  the markdown report and figures, from the records alone
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import ConfigError, StudyConfig
from .launch import LocalLauncher, SubmititLauncher
from .plan import grid_runs, initial_grids
from .steps import StepError
from .study import Progress, outcome, run_study


def shown(path: Path) -> str:
    """``path`` relative to the working folder where it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def plan(config: StudyConfig) -> str:
    """The runs the study trains (those known: the grid and its widening so far, then the seeds), how many
    are recorded, and the training time of the others at the speed measured in the recorded ones."""
    study, result = config.study, outcome(config)
    grid = result.grid or grid_runs(study, initial_grids(study))
    seeds = len(study.selection.seeds) - 1
    runs = len(grid) + seeds * len(study.optimizers)
    left = runs - len(result.records)
    updates = result.max_update or study.train.budget_rule.max_update
    measured = [(r["wall_seconds"], r["curve"][-1]["num_updates"]) for r in result.records.values() if r["curve"]]
    rate = sum(s for s, _ in measured) / sum(u for _, u in measured) if measured else None
    cost = (f"≈ {duration(left * updates * rate / study.jobs)} of training at the {rate:.2f} s per update (per run, "
            f"{study.jobs} at once) measured in its {len(measured)} recorded runs" if rate else
            "no run recorded yet to measure its speed")
    lines = [f"{study.name}: {len(grid)} grid runs + {seeds} more seeds of each of {len(study.optimizers)} best "
             f"settings = {runs} runs of {updates} updates{' (budget run first)' if study.train.budget_rule else ''}, "
             f"{study.jobs} at once; {len(result.records)} recorded in {shown(config.records)}; {left} to run: {cost}."]
    lines += [f"  {'recorded' if run in result.records else 'to run  '}  {run.name}" for run in grid]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fairseq-sage-study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    parser.add_argument("verb", choices=("plan", "run", "status", "report"))
    parser.add_argument("config", type=Path, help="the study's TOML file")
    parser.add_argument("--jobs", type=int, help="runs at once (default: the config's jobs)")
    parser.add_argument("--slurm", metavar="PARTITION", help="run each training as a SLURM job (submitit)")
    parser.add_argument("--hours", type=int, default=72, help="a SLURM job's time limit (default: 72)")
    args = parser.parse_args(argv)
    try:
        config = StudyConfig(args.config)
        if args.verb == "plan":
            print(plan(config))
        elif args.verb == "status":
            progress = Progress(config)
            progress.track(outcome(config))
            print(progress.table(eta=False) + f"\nThe ETA of a running study: {shown(config.workdir / 'progress.md')}")
        elif args.verb == "run":
            jobs = args.jobs or config.study.jobs
            launcher = (SubmititLauncher(config.workdir / "submitit", slurm_partition=args.slurm, timeout_min=args.hours * 60)
                        if args.slurm else LocalLauncher(jobs))
            run_study(config, launcher)
        if args.verb in ("run", "report"):
            from .report import write_report  # matplotlib: only where a report is drawn
            print(f"report: {shown(write_report(config, shown(args.config)))}")
    except (ConfigError, StepError) as error:
        print(f"fairseq-sage-study: error: {error}", file=sys.stderr)
        return 1
    return 0

