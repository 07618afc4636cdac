"""A whole study from its configuration: data, budget, grid (widened while a best value is at an
edge), the seeds of each best setting, the paired bootstrap of the best seed pair; and what the
records say of it (:func:`outcome`), which both ``run`` and ``report`` read."""

import fcntl
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from fairseq_sage.files import write_atomic

from .config import ConfigError, StudyConfig
from .plan import (Run, budget_from_curve, budget_run, final_runs, grid_runs, initial_grids, select, seed_runs,
                   widen)
from .stats import paired_bootstrap
from .steps import complete_run, parse_json_log, read_record, train_log

BUDGET_RECORD = "budget.json.gz"
PAIRED_FILE = "paired_bootstrap.json"


@dataclass
class Outcome:
    """What the records hold: the budget, the grids (with their widening), each optimizer's best
    setting (once its grid is recorded), its seeds and the best seed pair (once they are)."""

    records: Dict[Run, dict]
    budget: Optional[dict] = None
    max_update: Optional[int] = None
    grids: dict = field(default_factory=dict)
    grid: List[Run] = field(default_factory=list)
    chosen: Dict[str, Run] = field(default_factory=dict)
    finals: List[Run] = field(default_factory=list)
    pair: Dict[str, Run] = field(default_factory=dict)

    def pending(self, runs: List[Run]) -> List[Run]:
        return [run for run in runs if run not in self.records]


def selection_score(config: StudyConfig, record: dict) -> float:
    selection = config.study.selection
    if selection.set is None:
        return max(row["bleu"] for row in record["curve"])
    return record["scores"][selection.model][selection.set]["bleu"]


def best_loss(record: dict) -> float:
    return min(row["loss"] for row in record["curve"])


def load_records(config: StudyConfig) -> Dict[str, dict]:
    return {path.name[:-len(".json.gz")]: read_record(path) for path in sorted(config.records.glob("*.json.gz"))}


def outcome(config: StudyConfig) -> Outcome:
    """Replay the study's decisions on its records (they are functions of the records alone)."""
    study, by_name = config.study, load_records(config)
    result = Outcome({})
    if study.train.budget_rule:
        record = by_name.get("budget")
        if record is None:
            return result
        result.budget = budget_from_curve(record["curve"], study.train.budget_rule)
        result.budget["curve"] = record["curve"]
    result.max_update = result.budget["budget"] if result.budget else study.train.max_update
    grids = initial_grids(study)
    while True:
        result.grids, result.grid = grids, grid_runs(study, grids)
        result.records.update({run: by_name[run.name] for run in result.grid if run.name in by_name})
        if result.pending(result.grid):
            return result
        score = {run: selection_score(config, result.records[run]) for run in result.grid}
        loss = {run: best_loss(result.records[run]) for run in result.grid}
        result.chosen = select(study, grids, score, loss)
        wider = widen(study, grids, select(study, grids, score, loss, incumbents=False))
        if wider == grids:
            break
        grids = wider
    result.finals = final_runs(study, result.chosen)
    result.records.update({run: by_name[run.name] for run in result.finals if run.name in by_name})
    if not result.pending(result.finals):
        for opt, run in result.chosen.items():
            seeds = seed_runs(study, run)
            result.pair[opt] = max(seeds, key=lambda r: selection_score(config, result.records[r]))
    return result


def prepare_data(config: StudyConfig) -> None:
    data = config.study.data
    if not config.data_bin.is_dir() and data.prepare:
        argv = [part.replace("{workdir}", str(config.workdir)) for part in data.prepare]
        log = config.workdir / "prepare.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            if subprocess.run(argv, cwd=config.folder, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise ConfigError(f"data.prepare: {' '.join(argv)} failed; its output is in {log}")
    if not config.data_bin.is_dir():
        raise ConfigError(f"data.data_bin: {config.data_bin}: no such folder (give a fairseq data-bin or data.prepare)")
    for name in data.sets:
        if not config.reference(name).is_file():
            raise ConfigError(f"data.sets.{name}.reference: {config.reference(name)}: no such file")


def write_paired(config: StudyConfig, result: Outcome) -> None:
    """sacreBLEU's paired bootstrap of each optimizer's best seed against the baseline's (the first
    optimizer's), per scored set and model, in RECORDS/paired_bootstrap.json (skipped where it holds
    this pair)."""
    path = config.records / PAIRED_FILE
    names = {opt: run.name for opt, run in result.pair.items()}
    if path.is_file() and json.loads(path.read_text())["pair"] == names:
        return
    baseline, *others = result.pair
    p_values = {}
    for model in config.study.score.models:
        for name in config.study.score.sets:
            references = config.reference(name).read_text().splitlines()
            hyps = {opt: result.records[run]["scores"][model][name]["hypotheses"] for opt, run in result.pair.items()}
            for opt in others:
                p_values[f"{model}/{name}/{opt}"] = paired_bootstrap(hyps[baseline], hyps[opt], references)
    write_atomic(path, json.dumps({"pair": names, "p_value": p_values}, indent=1) + "\n")


class Progress:
    """WORKDIR/progress.md, refreshed every ``interval`` seconds while runs train: each run's updates
    and the ETA from the throughput measured since this ``run`` started (and bars on a terminal)."""

    def __init__(self, config: StudyConfig, interval: float = 10.0):
        self.config, self.interval, self.start = config, interval, time.time()
        self.runs: Dict[str, int] = {}  # name -> planned updates
        self.first: Dict[str, int] = {}
        self.stop = threading.Event()
        self.bars = {} if sys.stderr.isatty() else None

    def updates(self, name: str) -> int:
        """The run's updates: its record's plan, else the most its fairseq log (every process's) has logged
        (a resumed process first writes its configuration, and then redoes what followed its checkpoint)."""
        if (self.config.records / f"{name}.json.gz").is_file():
            return self.runs[name]
        log = train_log(self.config.workdir / "runs" / name)
        text = log.read_text(errors="replace") if log.is_file() else ""
        lines = [line for line in text.splitlines() if 'num_updates"' in line]
        return int(max((row["num_updates"] for rows in parse_json_log(lines).values() for row in rows), default=0))

    def table(self, eta: bool = True) -> str:
        done = {name: self.updates(name) for name in self.runs}
        for name, value in done.items():
            self.first.setdefault(name, value)
        gained = sum(done[n] - self.first[n] for n in done)
        rate = gained / max(time.time() - self.start, 1e-9)
        left = sum(self.runs[n] - done[n] for n in done)
        eta_text = f"{left / rate / 60:.0f} min" if rate > 0 else "not yet measured"
        rows = "".join(f"| {n} | {done[n]} / {self.runs[n]} |\n" for n in self.runs)
        if self.bars is not None:
            from tqdm import tqdm
            for i, name in enumerate(self.runs):
                bar = self.bars.setdefault(name, tqdm(total=self.runs[name], desc=name, position=i, leave=False))
                bar.update(done[name] - bar.n)
        speed = f" at {rate:.2f} updates/s (measured since this run started): ETA {eta_text}" if eta else ""
        return (f"# {self.config.study.name}: progress\n\n{left} updates left{speed}.\n\n"
                f"| run | updates |\n| --- | --- |\n{rows}")

    def track(self, result: Outcome) -> Outcome:
        """Show every run of ``result``'s grid and seeds (those known so far)."""
        self.runs.update({run.name: result.max_update or 0 for run in result.grid + result.finals})
        return result

    def refresh(self) -> None:
        write_atomic(self.config.workdir / "progress.md", self.table())

    def __enter__(self):
        def loop():
            while not self.stop.wait(self.interval):
                self.refresh()
        threading.Thread(target=loop, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.refresh()
        for bar in (self.bars or {}).values():
            bar.close()


def launch(config: StudyConfig, launcher, runs: List[Run], max_update: int, train_only: bool = False,
           name: str = None) -> None:
    launcher.launch(complete_run, [(str(config.path), run, max_update, train_only, name) for run in runs])


def run_study(config: StudyConfig, launcher) -> Outcome:
    """Run (or resume) the whole study; what is recorded is not run again. One ``run`` per work folder
    at a time (a lock held while it runs)."""
    config.workdir.mkdir(parents=True, exist_ok=True)
    lock = open(config.workdir / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"{config.workdir}: a study is already running there (see its progress.md)") from None
    prepare_data(config)
    config.records.mkdir(parents=True, exist_ok=True)
    with lock, Progress(config) as progress:
        rule = config.study.train.budget_rule
        if rule:
            progress.runs["budget"] = rule.max_update
            launch(config, launcher, [budget_run(config.study)], rule.max_update, True, "budget")
        result = progress.track(outcome(config))
        while result.pending(result.grid) or not result.chosen:
            launch(config, launcher, result.pending(result.grid), result.max_update)
            result = progress.track(outcome(config))
        launch(config, launcher, result.pending(result.finals), result.max_update)
        result = progress.track(outcome(config))
        if config.study.score.paired_bootstrap and len(result.pair) > 1:
            write_paired(config, result)
    return result
