"""The steps of one run, each an idempotent function whose output file (written atomically) is its
marker: train (fairseq-train, which resumes itself from checkpoint_last.pt), average, score (beam
search, sacreBLEU and chrF), prune (python -m fairseq_sage.tools.analysis), and the run's record, the one
file a finished run leaves (scores, curves, cost, translations; no checkpoint). A run whose record
exists is done: a study restores it from there instead of training it again."""

import csv
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import sacrebleu

from fairseq_sage.files import write_atomic

from .config import StudyConfig
from .plan import Run

USER_DIR = Path(__file__).resolve().parents[2]  # the fairseq_sage package, fairseq's --user-dir


class StepError(Exception):
    """A step's command failed; the message names the run, the step and the log to read."""


def read_record(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def write_record(path: Path, record: dict) -> None:
    """The record as gzipped JSON, the same bytes for the same record (no time stamp in the gzip header)."""
    data = json.dumps(record, indent=1, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, gzip.compress(data, mtime=0))


def log_path(run_dir: Path, name: str) -> Path:
    return run_dir / "logs" / f"{name}.out"


def train_log(run_dir: Path) -> Path:
    """fairseq-train's output, every process's appended: its ``--log-format json`` lines are the run's
    log (fairseq's own ``--log-file`` would repeat each line once more at every epoch)."""
    return log_path(run_dir, "train")


def command(run_dir: Path, name: str, argv: List[str], env: Optional[dict] = None) -> None:
    """Run ``argv`` with its output in run_dir/logs/NAME.out; a failure raises :class:`StepError`."""
    log = log_path(run_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        status = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}).returncode
    if status:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise StepError(f"{run_dir.name}: {name} failed (exit {status}): {tail[0][:200]}; the whole log: {log}")


def parse_json_log(lines: List[str]) -> Dict[str, List[dict]]:
    """fairseq's ``--log-format json`` lines read as data: ``train`` (every --log-interval updates),
    ``valid`` (each validation: loss, bleu) and ``epochs`` (end-of-epoch train averages: wps, loss),
    the prefixes ``valid_`` and ``train_`` dropped, one record per update count (the last one logged:
    a resumed run logs again the updates it redid after its checkpoint)."""
    kinds: Dict[str, Dict[float, dict]] = {"train": {}, "valid": {}, "epochs": {}}
    for line in lines:
        try:
            row = json.loads(line[line.index("{"):])
        except (ValueError, TypeError):
            continue  # fairseq's other messages (its configuration is a Python repr, not JSON)
        if not isinstance(row, dict) or "epoch" not in row:
            continue
        kind, prefix = next(((k, p) for k, p in (("valid", "valid_"), ("epochs", "train_")) if f"{p}loss" in row),
                            ("train", ""))
        values = {}
        for key, value in row.items():
            try:
                values[key.removeprefix(prefix)] = float(value)
            except (TypeError, ValueError):
                continue
        if "num_updates" in values:
            kinds[kind][values["num_updates"]] = values
    return {kind: [rows[u] for u in sorted(rows)] for kind, rows in kinds.items()}


class RunSteps:
    """The steps of ``run`` in the study ``config``, in WORKDIR/runs/NAME."""

    def __init__(self, config: StudyConfig, run: Run, max_update: int, train_only: bool = False, name: str = None):
        self.config, self.study, self.run = config, config.study, run
        self.max_update, self.train_only = max_update, train_only
        self.dir = config.workdir / "runs" / (name or run.name)
        self.save_dir = self.dir / "checkpoints"
        self.record_path = config.records / f"{name or run.name}.json.gz"

    def checkpoint(self, model: str) -> Path:
        return self.dir / f"{model}.pt" if model == "checkpoint_avg" else self.save_dir / f"{model}.pt"

    # ---- training

    def train(self) -> dict:
        """fairseq-train with the study's flags, the optimizer's, the setting's and the budget; its JSON
        log read into WORKDIR/runs/NAME/train.json. The wall time counts each process up to its last saved
        checkpoint (what a killed process did after it is done again by the next one)."""
        done = self.dir / "train.json"
        if done.is_file():
            return json.loads(done.read_text())
        self.save_dir.mkdir(parents=True, exist_ok=True)
        started, seconds_file = self.dir / "process.started", self.dir / "kept_seconds"
        kept = float(seconds_file.read_text()) if seconds_file.is_file() else 0.0
        last = self.save_dir / "checkpoint_last.pt"
        if started.is_file() and last.is_file():  # the previous process was killed
            kept += max(0.0, last.stat().st_mtime - float(started.read_text()))
            write_atomic(seconds_file, f"{kept}\n")
        write_atomic(started, f"{time.time()}\n")
        optimizer = self.study.optimizers[self.run.optimizer]
        keep = ["--keep-last-epochs", str(self.study.train.average_last)] if self.study.train.average_last else []
        data = self.study.data
        argv = [sys.executable, "-m", "fairseq_cli.train", str(self.config.data_bin), "--user-dir", str(USER_DIR),
                "--source-lang", data.source_lang, "--target-lang", data.target_lang, *self.study.train.flags,
                *optimizer.flags, *self.run.flags(), "--max-update", str(self.max_update), *keep,
                "--save-dir", str(self.save_dir), "--log-format", "json", "--no-progress-bar"]
        begin = time.time()
        command(self.dir, "train", argv)
        log = parse_json_log(train_log(self.dir).read_text(errors="replace").splitlines())
        result = {**log, "wall_seconds": kept + time.time() - begin}
        write_atomic(done, json.dumps(result) + "\n")
        started.unlink()
        return result

    def average(self) -> None:
        output = self.checkpoint("checkpoint_avg")
        if output.is_file():
            return
        # the averaging tool writes its --output atomically: a killed average leaves no checkpoint_avg.pt
        command(self.dir, "average", [sys.executable, "-m", "fairseq_sage.tools.average_checkpoints", "--inputs",
                                      str(self.save_dir), "--num-epoch-checkpoints", str(self.study.train.average_last),
                                      "--output", str(output)])

    # ---- scoring

    def score(self, model: str, name: str) -> dict:
        """Beam search of ``model`` on the set ``name``; sacreBLEU and chrF of its (post-processed)
        translations against the raw references, in WORKDIR/runs/NAME/scores/MODEL.SET.json."""
        done = self.dir / "scores" / f"{model}.{name}.json"
        if done.is_file():
            return json.loads(done.read_text())
        data, score = self.study.data, self.study.score
        post = ["--post-process", data.post_process] if data.post_process else []
        argv = [sys.executable, "-m", "fairseq_cli.generate", str(self.config.data_bin), "--user-dir", str(USER_DIR),
                "--source-lang", data.source_lang, "--target-lang", data.target_lang, "--path", str(self.checkpoint(model)),
                "--gen-subset", data.sets[name].subset, "--beam", str(score.beam), *post, *score.generate_flags,
                "--results-path", str(self.dir / "generate" / f"{model}.{name}")]
        command(self.dir, f"generate.{model}.{name}", argv)
        output = next((self.dir / "generate" / f"{model}.{name}").glob("generate-*.txt")).read_text().splitlines()
        detokenized = {int(line.split("\t")[0][2:]): line.split("\t")[2] if line.count("\t") >= 2 else ""
                       for line in output if line.startswith("D-")}
        hypotheses = [detokenized[i] for i in sorted(detokenized)]
        references = self.config.reference(name).read_text().splitlines()
        if len(hypotheses) != len(references):
            raise StepError(f"{self.run.name}: {len(hypotheses)} translations of {name} for {len(references)} "
                            f"references in {self.config.reference(name)}; data.sets.{name} names another subset?")
        bleu = sacrebleu.BLEU()
        result = {"bleu": round(bleu.corpus_score(hypotheses, [references]).score, 2),
                  "bleu_signature": str(bleu.get_signature()),
                  "chrf": round(sacrebleu.CHRF().corpus_score(hypotheses, [references]).score, 2),
                  "hypotheses": hypotheses}
        done.parent.mkdir(exist_ok=True)
        write_atomic(done, json.dumps(result) + "\n")
        return result

    def prune(self) -> dict:
        """The sensitivity per layer type, its zero-sensitivity weights by cause (where the analysis writes
        them) and BLEU after pruning at each level by each of pruning.by's criteria."""
        folder = self.dir / "analysis"
        if (self.dir / "pruning.json").is_file():
            return json.loads((self.dir / "pruning.json").read_text())
        pruning, data = self.study.pruning, self.study.data
        post = ["--post-process", data.post_process] if data.post_process else []
        command(self.dir, "prune", [sys.executable, "-m", "fairseq_sage.tools.analysis", str(self.config.data_bin),
                                    "--path", str(self.checkpoint(pruning.model)), "--cpu",
                                    "--prune-levels", ",".join(f"{v:g}" for v in pruning.levels),
                                    "--gen-subset", data.sets[pruning.set].subset, "--num-batches", str(pruning.batches),
                                    "--prune-by", ",".join(pruning.by), *post, "--output-dir", str(folder)])
        result = {"pruning": read_csv(folder / "pruning_bleu.csv"),
                  "sensitivity_by_type": read_csv(folder / "sensitivity_by_type.csv")}
        if (folder / "zero_sensitivity.csv").is_file():
            result["zero_sensitivity"] = read_csv(folder / "zero_sensitivity.csv")
        write_atomic(self.dir / "pruning.json", json.dumps(result) + "\n")
        return result

    # ---- the whole run

    def complete(self) -> Path:
        """Every step of the run, then its record (returned); a recorded run is not run again."""
        if self.record_path.is_file():
            return self.record_path
        log = self.train()
        record = {"run": {"optimizer": self.run.optimizer, "setting": dict(self.run.setting), "seed": self.run.seed,
                          "max_update": self.max_update},
                  "curve": log["valid"], "train": log["train"], "epochs": log["epochs"],
                  "wall_seconds": log["wall_seconds"], "scores": {}}
        if not self.train_only:
            if self.study.train.average_last:
                self.average()
            selection = self.study.selection
            wanted = {(selection.model, selection.set)} if selection.set else set()
            wanted |= {(model, name) for model in self.study.score.models for name in self.study.score.sets}
            for model, name in sorted(wanted):
                record["scores"].setdefault(model, {})[name] = self.score(model, name)
            if self.study.pruning:
                record.update(self.prune())
        write_record(self.record_path, record)
        return self.record_path


TEXT_COLUMNS = ("type", "criterion", "cause")


def read_csv(path: Path) -> List[dict]:
    """The rows of a CSV file, numbers as floats and names (type, criterion, cause) as text."""
    with open(path, newline="") as handle:
        return [{k: (v if k in TEXT_COLUMNS else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]


def complete_run(config_path: str, run: Run, max_update: int, train_only: bool = False, name: str = None) -> str:
    """One run, start to record, as a launcher calls it (in this process or another); ``name``: its
    folder and record instead of the run's name (the budget run)."""
    return str(RunSteps(StudyConfig(Path(config_path)), run, max_update, train_only, name).complete())
