"""studies/multi30k: the whole study script on a micro configuration of real Multi30k lines, and its
selection, statistics and report on fabricated run folders.

The micro study takes the first lines of every split of ../shared/data/multi30k (16 of the 1,014
`val` pairs, so that scoring validation BLEU stays cheap; prepare.sh has no setting for that), a tiny
transformer, 4 updates per run, a 1 + 1 grid and 2 seeds, and runs every step of run_study.sh.
"""

import csv
import gzip
import hashlib
import json
import math
import os
import re
import statistics
import signal
import subprocess
import sys
import time

import pytest

from conftest import MULTI30K, REPO, TINY_TRANSFORMER
from studies.multi30k import budget, plan, report, stats
from studies.multi30k.train_log import parse_train_log

SCRIPT = REPO / "studies" / "multi30k" / "run_study.sh"
TINY_FLAGS = [*TINY_TRANSFORMER[TINY_TRANSFORMER.index("--arch") + 2 :], "--num-workers", "0"]
SUBSET_LINES = {"train": 300, "val": 16, "test_2016_flickr": 8, "test_2017_flickr": 8}
MICRO = {
    "ADAM_LRS": "1e-3", "SAGE_LRS": "3e-3", "SAGE_BETA0S": "0.8", "SEEDS": "1 2",
    "MAX_UPDATE": "4", "WARMUP_UPDATES": "2", "MAX_TOKENS": "1024", "SAVE_INTERVAL_UPDATES": "2",
    "LOG_INTERVAL": "1", "SPM_VOCAB_SIZE": "1000", "PRUNE_LEVELS": "0,20", "PRUNE_BATCHES": "1",
}  # fmt: skip
GRID = ["adam-lr1e-3-seed1", "adam_sage-lr3e-3-b0.8-seed1"]
FINAL = {"adam": ["adam-lr1e-3-seed1", "adam-lr1e-3-seed2"],
         "adam_sage": ["adam_sage-lr3e-3-b0.8-seed1", "adam_sage-lr3e-3-b0.8-seed2"]}  # fmt: skip
FIGURES = ["beta0_lr_heatmap.png", "learning_curves.png", "sage_multiplier.png", "pruning.png",
           "sensitivity_adam.png", "sensitivity_adam_sage.png"]  # fmt: skip
STEP_LINE = re.compile(r"^\[multi30k-study\] (skip )?(\S+?\.(?:train|valid|test|pruning)|report)\b", re.M)

needs_real_data = pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"real Multi30k folder {MULTI30K} not present")


def run_study(*args, env=None):
    # one thread: a tiny model gains nothing from two, and threads waiting on a busy CPU cost much
    environment = {**os.environ, "PYTHON": sys.executable, "WORKERS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd="/", env=environment,
                          capture_output=True, text=True)  # fmt: skip


def check_ok(process):
    assert process.returncode == 0, f"{process.stdout[-4000:]}\n{process.stderr[-4000:]}"
    return process


def steps(stdout):
    """{step: 'ran' | 'skipped'} from the study's progress lines."""
    return {name: "skipped" if skip else "ran" for skip, name in STEP_LINE.findall(stdout)}


def snapshot(folder):
    """{path: modification time} of every file under ``folder`` except the step markers and the log of
    prepare.sh (which is run every time, to skip its own finished steps)."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and ".steps" not in p.parts and p.name != "prepare.out"}


def bleu(path):
    return json.loads(path.read_text())["score"]


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory):
    """The first lines of each split of the real Multi30k, gzipped, with their SHA256SUMS."""
    folder = tmp_path_factory.mktemp("multi30k")
    sums = ""
    for split, count in SUBSET_LINES.items():
        for lang in ("de", "en"):
            name = f"{split}.{lang}.gz"
            with gzip.open(MULTI30K / name, "rt", encoding="utf-8") as source:
                lines = [next(source) for _ in range(count)]
            with gzip.open(folder / name, "wt", encoding="utf-8") as out:
                out.writelines(lines)
            sums += f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
    (folder / "SHA256SUMS").write_text(sums)
    return folder


@pytest.fixture(scope="module")
def micro_study(real_subset, tmp_path_factory):
    """(WORKDIR, the report's path, the finished process, the environment) of one micro study."""
    root = tmp_path_factory.mktemp("study")
    (root / "docs").mkdir()
    env = {**MICRO, "RESULTS_DOC": str(root / "docs" / "results.md"),
           "MULTI30K_SHA256SUMS": str(real_subset / "SHA256SUMS")}  # fmt: skip
    workdir = root / "work"
    process = check_ok(run_study("--data", real_subset, workdir, "--", *TINY_FLAGS, env=env))
    return workdir, root / "docs" / "results.md", process, env


@needs_real_data
def test_micro_study_writes_every_artefact(micro_study, real_subset):
    workdir, doc, process, _ = micro_study
    expected = [f"{run}.{step}" for run in GRID for step in ("train", "valid")]
    expected += [f"{run}.test" for runs in FINAL.values() for run in runs]
    expected += [f"{run}.train" for runs in FINAL.values() for run in runs[1:]]
    expected += ["adam.pruning", "adam_sage.pruning", "report"]
    ran = [name for skip, name in STEP_LINE.findall(process.stdout) if not skip and name != "report"] + ["report"]
    assert sorted(ran) == sorted(expected), process.stdout
    for run in GRID:  # the seed-1 run of a best setting is the grid run: not trained twice
        assert f"[multi30k-study] skip {run}.train: already done" in process.stdout
    assert "prepare: train: 300 pairs, valid: 16, test2016: 8, test2017: 8" in process.stdout
    assert "best by validation BLEU: Adam lr=1e-3; Adam-SAGE lr=3e-3 beta0=0.8" in process.stderr

    for optimizer, runs in FINAL.items():
        for run in runs:
            folder = workdir / "runs" / run
            assert (folder / "checkpoints" / optimizer / "checkpoint_best.pt").is_file()
            assert not list((folder / "checkpoints" / optimizer).glob("checkpoint_*_*.pt"))  # mid-epoch ones removed
            log = parse_train_log((folder / "checkpoints" / optimizer / "train.log").read_text())
            assert [r["num_updates"] for r in log.train] == [1, 2, 3, 4]
            assert [r["num_updates"] for r in log.valid] == [2, 4]
            assert all(("sage_mult_mean" in r) == (optimizer == "adam_sage") for r in log.train)
            for test in ("test2016", "test2017"):
                assert 0 <= bleu(folder / "eval" / optimizer / f"{test}.sacrebleu.json") <= 100
                assert len((folder / "eval" / optimizer / f"{test}.hyp").read_text().splitlines()) == 8
        seed1 = workdir / "runs" / runs[0] / "eval" / optimizer
        assert len((seed1 / "valid.hyp").read_text().splitlines()) == 16
        with (workdir / "analysis" / optimizer / "pruning_bleu.csv").open() as handle:
            assert [float(row["prune_percent"]) for row in csv.DictReader(handle)] == [0.0, 20.0]
    for name in FIGURES:
        assert (workdir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (doc.parent / "figures" / "multi30k" / name).read_bytes() == (workdir / "figures" / name).read_bytes()
        assert f"](figures/multi30k/{name})" in doc.read_text()
        assert f"](figures/{name})" in (workdir / "results.md").read_text()
    assert "**Complete:**" in doc.read_text() and "## Pending" not in doc.read_text()
    assert f"--data {real_subset}" in doc.read_text()  # the command that regenerates it


@needs_real_data
def test_tables_and_mean_std_match_the_run_files(micro_study):
    workdir, doc, _, _ = micro_study
    # the selection, from the validation scores alone
    selection = json.loads((workdir / "selection.json").read_text())
    for optimizer in ("adam", "adam_sage"):
        grid = [run for run in GRID if run.startswith(optimizer + "-")]
        scores = {run: bleu(workdir / "runs" / run / "eval" / optimizer / "valid.sacrebleu.json") for run in grid}
        assert selection[optimizer]["run"] == max(scores, key=scores.get) == FINAL[optimizer][0]
        assert selection[optimizer]["valid_bleu"] == scores[FINAL[optimizer][0]]

    summary = json.loads((workdir / "results" / "summary.json").read_text())
    markdown = doc.read_text()
    for optimizer, label in (("adam", "Adam"), ("adam_sage", "Adam-SAGE")):
        cells = re.search(rf"^\| \*\*{label} mean ± std\*\* \|  \|  \|  \| (\S+) ± (\S+) \| (\S+) ± (\S+) \|", markdown, re.M)
        assert cells, markdown
        for index, test in enumerate(("test2016", "test2017")):
            scores = [bleu(workdir / "runs" / run / "eval" / optimizer / f"{test}.sacrebleu.json") for run in FINAL[optimizer]]
            expected_mean, expected_std = statistics.mean(scores), statistics.stdev(scores)
            stats = summary["best"][optimizer][test]
            assert stats["per_seed"] == {"1": scores[0], "2": scores[1]}
            assert stats["mean"] == pytest.approx(expected_mean, abs=1e-9)
            assert stats["std"] == pytest.approx(expected_std, abs=1e-9)
            assert stats["std"] == pytest.approx(abs(scores[0] - scores[1]) / math.sqrt(2), abs=1e-9)
            assert float(cells.group(1 + 2 * index)) == pytest.approx(expected_mean, abs=0.005)
            assert float(cells.group(2 + 2 * index)) == pytest.approx(expected_std, abs=0.005)
    for test in ("test2016", "test2017"):
        adam, sage = summary["best"]["adam"][test], summary["best"]["adam_sage"][test]
        assert summary["comparison"][test]["difference"] == pytest.approx(sage["mean"] - adam["mean"])
        assert summary["comparison"][test]["standard_error"] == pytest.approx(
            math.sqrt(adam["std"] ** 2 / 2 + sage["std"] ** 2 / 2))

    with (workdir / "results" / "runs.csv").open() as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted({*GRID, *FINAL["adam"], *FINAL["adam_sage"]})
    assert rows == {row["run"]: {k: "" if v is None else str(v) for k, v in row.items()}
                    for row in json.loads((workdir / "results" / "runs.json").read_text())}
    for run in GRID:
        optimizer = run.split("-")[0]
        assert float(rows[run]["valid_bleu"]) == bleu(workdir / "runs" / run / "eval" / optimizer / "valid.sacrebleu.json")
        assert rows[run]["updates"] == "4" and rows[run]["finished"] == "True"
        log_text = (workdir / "runs" / run / "checkpoints" / optimizer / "train.log").read_text()
        valid_losses = [r["loss"] for r in parse_train_log(log_text).valid]
        assert float(rows[run]["best_valid_loss"]) == min(valid_losses)
        trained = float(re.search(r"done training in ([\d.]+) seconds", log_text).group(1))
        assert trained - 1 <= float(rows[run]["wall_seconds"]) <= trained + 30  # + loading data and model
    drops = {}
    for optimizer in ("adam", "adam_sage"):
        with (workdir / "analysis" / optimizer / "pruning_bleu.csv").open() as handle:
            curve = {float(r["prune_percent"]): float(r["bleu"]) for r in csv.DictReader(handle)}
        drops[optimizer] = curve[0.0] - curve[20.0]
    assert (f"From 0 % to 20 % pruned, Adam loses {drops['adam']:.2f} BLEU and Adam-SAGE "
            f"{drops['adam_sage']:.2f}.") in markdown
    pruning = {row["prune_percent"]: row["bleu"] for row in summary["pruning"]["adam_sage"]}
    with (workdir / "analysis" / "adam_sage" / "pruning_bleu.csv").open() as handle:
        assert pruning == {float(r["prune_percent"]): float(r["bleu"]) for r in csv.DictReader(handle)}


@needs_real_data
def test_changed_model_setting_in_the_same_workdir_is_refused(micro_study):
    workdir, _, _, env = micro_study
    before = snapshot(workdir)
    result = run_study(workdir, "--", *TINY_FLAGS, env={**env, "MAX_UPDATE": "5"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {workdir} was run with MAX_UPDATE='4', now '5'; use the same settings or another WORKDIR")
    assert snapshot(workdir) == before


@needs_real_data
def test_rerun_skips_every_step_and_a_deleted_marker_reruns_only_its_step(micro_study, real_subset):
    workdir, doc, first, env = micro_study
    before = snapshot(workdir)
    doc_before = doc.stat().st_mtime_ns
    again = check_ok(run_study("--data", real_subset, workdir, "--", *TINY_FLAGS, env=env))
    assert set(steps(again.stdout).values()) == {"skipped"}
    assert steps(again.stdout).keys() == steps(first.stdout).keys()
    for step in ("fetch", "decompress", "sentencepiece", "encode", "binarize"):
        assert f"prepare: skip {step}: already done" in again.stdout
    assert snapshot(workdir) == before and doc.stat().st_mtime_ns == doc_before

    rerun = "adam_sage-lr3e-3-b0.8-seed1"
    (workdir / "runs" / rerun / ".steps" / f"{rerun}.valid.done").unlink()
    third = check_ok(run_study("--data", real_subset, workdir, "--", *TINY_FLAGS, env=env))
    ran = [step for step, state in steps(third.stdout).items() if state == "ran"]
    assert ran[0] == f"{rerun}.valid" and set(ran) <= {f"{rerun}.valid", "report"}
    changed = {path for path, mtime in snapshot(workdir).items() if before.get(path) != mtime}
    valid_files = {workdir / "runs" / rerun / "eval" / "adam_sage" / f"valid.{kind}"
                   for kind in ("generate", "log", "hyp", "sacrebleu.json")}  # fmt: skip
    assert valid_files | {workdir / "runs" / rerun / "logs" / "valid.out"} <= changed
    # nothing else is redone: at most the report, if the new validation output differs
    assert changed - valid_files - {workdir / "runs" / rerun / "logs" / "valid.out"} <= {
        *(workdir / "results").glob("*"), workdir / "results.md", workdir / "report.out",
        *(workdir / "figures").glob("*")}  # fmt: skip


def test_bad_settings_stop_with_one_line(tmp_path):
    cases = {
        "SAGE_BETA0S=1.2": "error: SAGE_BETA0S: '1.2' is not a beta0 in (0, 1) like 0.8",
        "ADAM_LRS=fast": "error: ADAM_LRS: 'fast' is not a learning rate like 2e-3",
        "SEEDS=1 1": "error: SEEDS=1 1: a seed appears twice",
        "MAX_UPDATE=0": "error: MAX_UPDATE=0: must be a positive integer",
        "PRUNE_SUBSET=train": "error: PRUNE_SUBSET=train: must be valid, test (test2016) or test1 (test2017)",
        "PRUNE_LEVELS=10;20": "error: PRUNE_LEVELS=10;20: give comma-separated percentages like 0,10,20",
    }
    for setting, message in cases.items():
        key, value = setting.split("=", 1)
        result = run_study(tmp_path / "work", env={key: value})
        assert result.returncode == 1 and result.stderr.strip() == message, setting
    result = run_study("--data", tmp_path / "missing")
    assert result.stderr.strip() == f"error: --data {tmp_path}/missing: no such folder; give the folder of Multi30k's .gz files"
    assert "unknown option --fast" in run_study("--fast").stderr
    assert not (tmp_path / "work" / "study.env").exists()


def test_plan_writes_the_design_with_every_result_pending(tmp_path):
    doc = tmp_path / "results.md"
    result = check_ok(run_study("--plan", tmp_path / "work", env={"RESULTS_DOC": str(doc)}))
    assert "report:" in result.stdout
    text = doc.read_text()
    assert "**Results pending: not run yet.**" in text
    assert "Adam lr ∈ {1e-3, 2e-3, 4e-3, 8e-3}; Adam-SAGE lr ∈ {2e-3, 5e-3, 1e-2, 2e-2} × β0 ∈ {0.6, 0.8, 0.9}" in text
    assert "16 grid runs + 2 × 2 more seeds = 20 training runs of 600 updates" in text
    assert f"bash studies/multi30k/run_study.sh {tmp_path / 'work'}\n" in text
    tables = "\n".join(line for line in text.splitlines() if line.startswith("| "))
    assert tables.count("| pending ") == 16 * 5 + 12  # the grid table and the β0 × lr table
    assert not re.search(r"\d\.\d\d", tables)  # no score or loss anywhere
    assert len(re.findall(r"^- grid run .*: validation BLEU$", text, re.M)) == 16
    assert not (tmp_path / "work" / "runs").exists()


# ---- selection, statistics and report on fabricated run folders (no training)


def fabricate_study(workdir, valid_bleu, test_bleu, seeds="1 2 3"):
    """A WORKDIR whose runs hold a train.log and sacreBLEU files with the given scores.

    ``valid_bleu``: {run name: (BLEU, best valid loss)}; ``test_bleu``: {run name: (test2016, test2017)}."""
    settings = {"ADAM_LRS": "1e-3 2e-3", "SAGE_LRS": "2e-3 5e-3", "SAGE_BETA0S": "0.6 0.9", "SEEDS": seeds,
                "MAX_UPDATE": "600", "WARMUP_UPDATES": "200", "MAX_TOKENS": "2048", "SAVE_INTERVAL_UPDATES": "100",
                "LOG_INTERVAL": "25", "MAX_TRAIN_LINES": "all", "MAX_TEST_LINES": "all", "SPM_VOCAB_SIZE": "8000",
                "PRUNE_LEVELS": "0,10", "PRUNE_SUBSET": "test", "PRUNE_BATCHES": "8", "TRAIN_FLAGS": "",
                "DATA": "", "OVERRIDDEN": ""}  # fmt: skip
    workdir.mkdir(parents=True)
    (workdir / "study.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    for name, (score, loss) in valid_bleu.items():
        write_run(workdir, name, loss, {"valid": score})
    for name, (score2016, score2017) in test_bleu.items():
        write_run(workdir, name, 5.0, {"test2016": score2016, "test2017": score2017})


def write_run(workdir, name, loss, scores):
    optimizer = name.split("-")[0]
    save_dir = workdir / "runs" / name / "checkpoints" / optimizer
    eval_dir = workdir / "runs" / name / "eval" / optimizer
    save_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    if not (save_dir / "train.log").exists():
        (save_dir / "train.log").write_text(
            f"2026 | INFO | valid | epoch 001 | valid on 'valid' subset | loss {loss + 1} | num_updates 300\n"
            f"2026 | INFO | valid | epoch 002 | valid on 'valid' subset | loss {loss} | num_updates 600\n")
        (save_dir / "train.done").write_text("fairseq-train ...\n")
    for subset, score in scores.items():
        (eval_dir / f"{subset}.sacrebleu.json").write_text(json.dumps({"score": score, "signature": "nrefs:1|test"}))


GRID_SCORES = {
    "adam-lr1e-3-seed1": (30.0, 4.0), "adam-lr2e-3-seed1": (31.0, 4.2),
    "adam_sage-lr2e-3-b0.6-seed1": (29.0, 4.0), "adam_sage-lr5e-3-b0.6-seed1": (31.5, 4.1),
    "adam_sage-lr2e-3-b0.9-seed1": (30.0, 4.0), "adam_sage-lr5e-3-b0.9-seed1": (31.5, 4.0),  # tie: lower loss wins
}  # fmt: skip


def test_selection_takes_the_highest_valid_bleu_and_breaks_ties_by_valid_loss(tmp_path, capsys):
    fabricate_study(tmp_path / "work", GRID_SCORES, {})
    assert plan.main(["final", str(tmp_path / "work")]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == ["adam-lr2e-3-seed1", "adam", "2e-3", "-", "1",
                     "adam_sage-lr5e-3-b0.9-seed1", "adam_sage", "5e-3", "0.9", "1",
                     "adam-lr2e-3-seed2", "adam", "2e-3", "-", "2",
                     "adam_sage-lr5e-3-b0.9-seed2", "adam_sage", "5e-3", "0.9", "2",
                     "adam-lr2e-3-seed3", "adam", "2e-3", "-", "3",
                     "adam_sage-lr5e-3-b0.9-seed3", "adam_sage", "5e-3", "0.9", "3"]  # fmt: skip
    selection = json.loads((tmp_path / "work" / "selection.json").read_text())
    assert selection["adam_sage"] == {"run": "adam_sage-lr5e-3-b0.9-seed1", "lr": "5e-3", "beta0": "0.9",
                                      "valid_bleu": 31.5, "best_valid_loss": 4.0}  # fmt: skip


def test_selection_waits_for_the_whole_grid(tmp_path, capsys):
    partial = dict(list(GRID_SCORES.items())[:-1])
    fabricate_study(tmp_path / "work", partial, {})
    assert plan.main(["pruning", str(tmp_path / "work")]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: no validation BLEU yet for adam_sage-lr5e-3-b0.9-seed1; run the study's grid first")


@pytest.mark.parametrize("sage_scores, verdict", [
    ([33.0, 33.2, 32.8], "Adam-SAGE beats Adam"),
    ([30.0, 32.0, 34.0], "no clear difference at this scale"),
    ([29.0, 29.2, 28.8], "Adam-SAGE does not beat Adam: Adam is better"),
])  # fmt: skip
def test_report_states_the_comparison_from_mean_and_standard_error(tmp_path, sage_scores, verdict):
    adam_scores = [31.0, 31.4, 30.6]
    tests = {f"adam-lr2e-3-seed{i}": (s, s - 1) for i, s in zip((2, 3), adam_scores[1:])}
    tests.update({f"adam_sage-lr5e-3-b0.9-seed{i}": (s, s - 1) for i, s in zip((2, 3), sage_scores[1:])})
    fabricate_study(tmp_path / "work", GRID_SCORES, tests)
    write_run(tmp_path / "work", "adam-lr2e-3-seed1", 0, {"test2016": adam_scores[0], "test2017": adam_scores[0] - 1})
    write_run(tmp_path / "work", "adam_sage-lr5e-3-b0.9-seed1", 0,
              {"test2016": sage_scores[0], "test2017": sage_scores[0] - 1})
    assert report.main([str(tmp_path / "work"), "--doc", str(tmp_path / "results.md")]) == 0
    text = (tmp_path / "results.md").read_text()
    difference = statistics.mean(sage_scores) - statistics.mean(adam_scores)
    error = math.sqrt(statistics.variance(adam_scores) / 3 + statistics.variance(sage_scores) / 3)
    line = next(line for line in text.splitlines() if line.startswith("- test2016: "))
    assert f"a difference of {difference:+.2f} BLEU" in line and f"(2 × {error:.2f})" in line and verdict in line
    assert (f"| Adam-SAGE | 5e-3 | 0.9 | 31.50 | {statistics.mean(sage_scores):.2f} ± "
            f"{statistics.stdev(sage_scores):.2f} |") in text
    assert "Adam-SAGE's best lr is 2.5× Adam's" in text
    assert "**Partial results:**" in text and "- Adam pruning curve" in text  # no pruning was fabricated


RESUMED_LOG = """\
2026-11-22 10:00:00 | INFO | fairseq.tasks.text_to_speech | Please install tensorboardX: pip install tensorboardX
2026-11-22 10:00:02 | INFO | fairseq_cli.train | {'_name': None, 'common': {}}
2026-11-22 10:00:40 | INFO | train_inner | epoch 001:     25 / 253 loss=9.5, num_updates=25, lr=0.0001, wall=38
2026-11-22 10:01:42 | INFO | train_inner | epoch 001:     50 / 253 loss=9.1, num_updates=50, lr=0.0002, wall=100
Traceback (most recent call last):
KeyboardInterrupt
2026-11-22 10:30:00 | INFO | fairseq.tasks.text_to_speech | Please install tensorboardX: pip install tensorboardX
/site-packages/hydra/compose.py:56: UserWarning:
2026-11-22 10:30:05 | INFO | fairseq_cli.train | {'_name': None, 'common': {}}
2026-11-22 10:30:09 | INFO | fairseq.checkpoint_utils | Loaded checkpoint checkpoint_last.pt (epoch 1 @ 50 updates)
2026-11-22 10:30:40 | INFO | train_inner | epoch 001:     75 / 253 loss=8.8, num_updates=75, lr=0.0003, wall=0
2026-11-22 10:30:45 | INFO | train | epoch 001 | loss 9.0 | num_updates 75 | wall 0
2026-11-22 10:30:50 | INFO | fairseq_cli.train | done training in 44.1 seconds
"""


def test_wall_time_of_a_resumed_run_adds_up_its_processes_from_the_log_timestamps():
    log = parse_train_log(RESUMED_LOG)
    # 10:00:02 → 10:01:42 and 10:30:05 → 10:30:50; fairseq's own wall meter says 0 after the resume
    assert log.process_seconds == [100.0, 45.0]
    assert log.wall_seconds == 145.0
    assert [r["num_updates"] for r in log.train] == [25, 50, 75] and log.epochs[-1]["wall"] == 0


# ---- the study at convergence (run_study.sh --converged)

CONVERGED_MICRO = {
    "ADAM_LRS": "1e-3", "SAGE_LRS": "3e-3", "SAGE_BETA0S": "0.8", "SEEDS": "1 2", "MAX_WIDEN": "0",
    "BUDGET_LR": "1e-3", "BUDGET_MAX_UPDATE": "30", "BUDGET_MIN_GAIN": "100", "AVERAGE_LAST": "2",
    "MAX_TOKENS": "1024", "WARMUP_UPDATES": "2", "LOG_INTERVAL": "1", "SPM_VOCAB_SIZE": "1000",
    "PRUNE_LEVELS": "0,20", "PRUNE_BATCHES": "1", "JOBS": "1",
}  # fmt: skip
CONVERGED_RUNS = {"adam": ["adam-lr1e-3-seed1", "adam-lr1e-3-seed2"],
                  "adam_sage": ["adam_sage-lr3e-3-b0.8-seed1", "adam_sage-lr3e-3-b0.8-seed2"]}  # fmt: skip
T_975 = {1: 12.706204736174705, 4: 2.7764451051977987}  # Student's t quantile 0.975 by degrees of freedom


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def converged_study(real_subset, tmp_path_factory):
    """A micro converged study started in the background, killed during its second grid run, then
    resumed in the foreground: (WORKDIR, doc, the launcher's output, the resumed output, the files
    of the first grid run before the kill with their mtimes)."""
    root = tmp_path_factory.mktemp("converged")
    (root / "docs").mkdir()
    doc = root / "docs" / "results.md"
    doc.write_text("# Multi30k De→En: Adam vs Adam-SAGE\n\nthe short-budget report\n")
    env = {**CONVERGED_MICRO, "RESULTS_DOC": str(doc), "MULTI30K_SHA256SUMS": str(real_subset / "SHA256SUMS")}
    workdir = root / "work"
    args = ["--converged", "--data", real_subset, workdir, "--", *TINY_FLAGS]
    launcher = check_ok(run_study(*args, env=env))
    first, second = CONVERGED_RUNS["adam"][0], CONVERGED_RUNS["adam_sage"][0]
    pid = int(re.search(r"process group (\d+)", launcher.stdout).group(1))

    def running():
        return subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 0

    def second_started():
        return (workdir / "runs" / first / ".steps" / f"{first}.train.done").is_file() and (
            workdir / "runs" / second / "checkpoints" / "adam_sage" / "train.log").is_file()

    wait_for(lambda: second_started() or not running(), 600, "the second grid run to start")
    assert second_started(), (workdir / "study.log").read_text()
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not running(), 30, "the killed study to end")
    kept = {p: p.stat().st_mtime_ns for p in (workdir / "runs" / first / "checkpoints").rglob("*.pt")}
    resumed = check_ok(run_study("--converged", "--foreground", *args[1:], env={**env, "JOBS": "2"}))
    return workdir, doc, launcher, resumed, kept


@needs_real_data
def test_converged_study_runs_in_the_background_and_resumes_without_redoing_finished_runs(converged_study):
    workdir, _, launcher, resumed, kept = converged_study
    assert re.search(r"estimate: 1 budget run of 30 updates \+ 2 grid runs \+ 2 more seeds = 5 training runs",
                     launcher.stdout), launcher.stdout
    assert "running in the background" in launcher.stdout and "progress.md" in launcher.stdout
    first = CONVERGED_RUNS["adam"][0]
    for step in ("budget.train", f"{first}.train"):
        assert f"[multi30k-converged] skip {step}: already done" in resumed.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished run's checkpoints untouched
    assert "training runs done: 5 of 5; remaining: 0" in (workdir / "progress.md").read_text()


@needs_real_data
def test_converged_study_budget_averaging_scores_and_statistics(converged_study):
    import sacrebleu
    import torch

    workdir, doc, _, _, _ = converged_study
    log = parse_train_log((workdir / "runs" / "budget" / "checkpoints" / "adam" / "train.log").read_text())
    points = [(r["num_updates"], r["bleu"]) for r in log.valid]
    assert [u for u, _ in points] == sorted({u for u, _ in points}) and len(points) >= 2
    # BUDGET_MIN_GAIN=100: the first validation with AVERAGE_LAST=2 validations up to it and one at or
    # before 0.8 of it
    expected = next(u for i, (u, _) in enumerate(points) if i >= 1 and any(v <= 0.8 * u for v, _ in points))
    budget = json.loads((workdir / "budget.json").read_text())
    assert budget["budget"] == expected
    assert "MAX_UPDATE=budget" in (workdir / "study.env").read_text()

    scores = {}
    for optimizer, runs in CONVERGED_RUNS.items():
        for run in runs:
            folder = workdir / "runs" / run / "checkpoints" / optimizer
            run_log = parse_train_log((folder / "train.log").read_text())
            assert max(r["num_updates"] for r in run_log.valid) == expected
            assert all("bleu" in r for r in run_log.valid)
            epochs = sorted(folder.glob("checkpoint[0-9]*.pt"), key=lambda p: int(p.stem[10:]))
            assert len(epochs) == 2  # --keep-last-epochs AVERAGE_LAST
            states = [torch.load(p, map_location="cpu", weights_only=False)["model"] for p in epochs]
            averaged = torch.load(folder / "checkpoint_avg.pt", map_location="cpu", weights_only=False)["model"]
            key = "encoder.layers.0.fc1.weight"
            assert torch.allclose(averaged[key], (states[0][key] + states[1][key]) / 2, atol=1e-6)
            for model in ("checkpoint_avg", "checkpoint_best"):
                out = workdir / "runs" / run / "eval" / optimizer / ("checkpoint_avg" if model == "checkpoint_avg" else "")
                for test in ("test2016", "test2017"):
                    hyps = (out / f"{test}.hyp").read_text().splitlines()
                    refs = (workdir / "data" / "text" / f"{test}.en").read_text().splitlines()
                    chrf = json.loads((out / f"{test}.chrf.json").read_text())["score"]
                    assert chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=0.01)
                    for metric, value in (("bleu", bleu(out / f"{test}.sacrebleu.json")), ("chrf", chrf)):
                        scores.setdefault((model, test, metric, optimizer), []).append(value)
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    for (model, test, metric, optimizer), values in scores.items():
        entry = summary["statistics"][f"{model}/{test}/{metric}"]
        assert entry[optimizer]["mean"] == pytest.approx(statistics.mean(values))
        assert entry[optimizer]["half_width"] == pytest.approx(T_975[1] * statistics.stdev(values) / math.sqrt(2))
        other = scores[(model, test, metric, "adam_sage")]
        base = scores[(model, test, metric, "adam")]
        assert entry["difference"]["mean"] == pytest.approx(statistics.mean(other) - statistics.mean(base))
    for test in ("test2016", "test2017"):
        paired = json.loads((workdir / "paired" / f"{test}.json").read_text())
        assert 0 <= paired[1]["BLEU"]["p_value"] <= 1 and paired[0]["system"].startswith("Baseline")
        assert summary["paired_bootstrap_p"][test] == paired[1]["BLEU"]["p_value"]
    assert summary["cost"]["adam"]["mult_mean"] == 1.0 and 0 < summary["cost"]["adam_sage"]["mult_mean"]

    text = doc.read_text()
    assert text.startswith("# Multi30k De→En: Adam vs Adam-SAGE\n\n<!-- converged study")
    assert text.rstrip().endswith("the short-budget report")  # the short-budget report is kept
    assert "**Complete:**" in text
    for test in ("test2016", "test2017"):
        assert re.search(rf"^- {test}: Adam-SAGE [+-]\d+\.\d\d ± \d+\.\d\d BLEU .*, (not )?significant; "
                         r"paired bootstrap of the best seed pair: p = 0\.\d{4}\.$", text, re.M), text
    for name in ("budget.png", "validation_curves.png", "sage_multiplier.png", "beta0_lr_heatmap.png", "pruning.png"):
        assert (workdir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/multi30k/converged/{name})" in text
    for optimizer in ("adam", "adam_sage"):
        assert (workdir / "analysis" / optimizer / "pruning_bleu.csv").is_file()


def test_t_interval_and_paired_difference_follow_the_formulas():
    adam = {1: 30.0, 2: 31.2, 3: 29.5, 4: 30.8, 5: 30.1}
    sage = {1: 30.6, 2: 31.0, 3: 30.9, 4: 31.5, 5: 30.4}
    result = stats.t_interval(list(adam.values()))
    assert result["mean"] == pytest.approx(sum(adam.values()) / 5)
    assert result["half_width"] == pytest.approx(T_975[4] * statistics.stdev(adam.values()) / math.sqrt(5))
    differences = [sage[s] - adam[s] for s in adam]
    paired = stats.paired_difference(adam, sage)
    assert paired["per_seed"] == pytest.approx(dict(zip(adam, differences)))
    assert paired["mean"] == pytest.approx(statistics.mean(differences))
    assert paired["half_width"] == pytest.approx(T_975[4] * statistics.stdev(differences) / math.sqrt(5))
    half = T_975[4] * statistics.stdev(differences) / math.sqrt(5)
    assert stats.verdict("test2016", paired) == (
        f"test2016: Adam-SAGE {statistics.mean(differences):+.2f} ± {half:.2f} BLEU (95 % CI of the paired "
        f"difference over 5 seeds), {'significant' if abs(statistics.mean(differences)) > half else 'not significant'}")
    noisy = stats.paired_difference(adam, {1: 32.0, 2: 29.0, 3: 31.0, 4: 29.5, 5: 31.5})
    assert stats.verdict("test2017", noisy).endswith(", not significant")
    assert stats.t_interval([31.0])["half_width"] is None


def test_budget_rule_takes_the_first_point_whose_last_fifth_gains_less_than_the_threshold():
    curve = [(130, 10.0), (260, 20.0), (390, 26.0), (520, 30.0), (650, 32.0), (780, 33.0), (910, 33.4),
             (1040, 33.5), (1170, 33.6), (1300, 33.5)]
    # best up to N minus best up to 0.8 N, from the curve by hand: 650: 32 − 30 = 2; 780: 33 − 30 (624 → 520);
    # 910: 33.4 − 32 (728 → 650); 1040: 33.5 − 33 (832 → 780) = 0.5; 1170: 33.6 − 33.4 (936 → 910) = 0.2
    assert budget.tail_gain(curve, 7, 0.2) == pytest.approx(0.5)
    assert budget.tail_gain(curve, 8, 0.2) == pytest.approx(0.2)
    # window=1: the raw curve; nothing after 1170 beats 33.6, so the later gains stay below 0.3 there
    assert budget.choose_budget(curve, 0.2, 0.3, 5, window=1) == 1170
    assert budget.choose_budget(curve, 0.2, 0.6, 5, window=1) == 1040  # later gain 33.6 − 33.5 = 0.1
    assert budget.choose_budget(curve, 0.2, 0.3, 10, window=1) == 1300  # at least 10 validations up to it
    assert budget.choose_budget(curve[:8], 0.2, 0.3, 5, window=1) is None
    assert budget.tail_gain(curve, 0, 0.2) is None  # nothing at or before 104 updates


def test_budget_rule_ignores_an_early_dip_and_reads_the_smoothed_curve():
    # the start of a real budget run: the dip at 650 updates gives a last fifth with no gain (28.7 up
    # to 520 and up to 650), but the run gained 8 BLEU later, so 650 is no budget
    dip = [(130, 4.2), (260, 18.0), (390, 20.1), (520, 28.7), (650, 25.4), (780, 32.5), (910, 33.5),
           (1040, 34.1), (1170, 35.9), (1300, 36.7)]
    assert budget.tail_gain(dip, 4, 0.2) == pytest.approx(0.0)
    assert budget.later_gain(dip, 4) == pytest.approx(8.0)
    assert budget.choose_budget(dip, 0.2, 0.3, 5, window=1) is None
    # trailing means: (3), (3 + 6)/2, (3 + 6 + 9)/3, (6 + 9 + 0)/3
    assert budget.smoothed([(1, 3.0), (2, 6.0), (3, 9.0), (4, 0.0)]) == [(1, 3.0), (2, 4.5), (3, 6.0), (4, 5.0)]
    # a plateau whose noise alternates ±0.5 BLEU; by hand, the means of 3 validations are 33.67 at
    # 700 updates, 33.83 at 800, then 34.17 and 33.83 in turn; the first N whose best mean exceeds
    # the best up to 0.8·N by < 0.3 is 1200 (34.17 against 34.17 at 900; at 1100: 34.17 − 33.83 up
    # to 880), where the raw curve stops at 900 (34.5 up to 900 and up to 720)
    noisy = [(100 * k, b) for k, b in enumerate([10, 20, 28, 31, 33, 33.5, 34.5, 33.5, 34.5, 33.5, 34.5, 33.5,
                                                 34.5, 33.5, 34.5], start=1)]
    assert [round(b, 2) for _, b in budget.smoothed(noisy)[6:10]] == [33.67, 33.83, 34.17, 33.83]
    assert budget.choose_budget(noisy, 0.2, 0.3, 5) == 1200
    assert budget.choose_budget(noisy, 0.2, 0.3, 5, window=1) == 900


def test_widening_adds_an_lr_beyond_a_best_at_the_edge(tmp_path, capsys):
    scores = {"adam-lr1e-3-seed1": (30.0, 4.0), "adam-lr2e-3-seed1": (31.0, 4.2),  # best at the top edge
              "adam_sage-lr2e-3-b0.6-seed1": (29.0, 4.0), "adam_sage-lr5e-3-b0.6-seed1": (28.5, 4.1),
              "adam_sage-lr2e-3-b0.9-seed1": (31.5, 4.0), "adam_sage-lr5e-3-b0.9-seed1": (30.5, 4.0)}  # fmt: skip
    fabricate_study(tmp_path / "work", scores, {})
    with (tmp_path / "work" / "study.env").open("a") as env:
        env.write("MAX_WIDEN=1\n")
    assert plan.main(["widen", str(tmp_path / "work")]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == [
        "adam-lr3e-3-seed1 adam 3e-3 - 1",  # 2e-3 + (2e-3 − 1e-3)
        # Adam-SAGE's best 2e-3 is its lowest lr: 2e-3 − (5e-3 − 2e-3) < 0, so half of 2e-3, for each β0
        "adam_sage-lr1e-3-b0.6-seed1 adam_sage 1e-3 0.6 1", "adam_sage-lr1e-3-b0.9-seed1 adam_sage 1e-3 0.9 1",
    ]
    assert json.loads((tmp_path / "work" / "widened.json").read_text()) == {"ADAM_LRS": ["3e-3"], "SAGE_LRS": ["1e-3"]}
    assert plan.main(["grid", str(tmp_path / "work")]) == 0  # the grid now holds them
    assert "adam-lr3e-3-seed1 adam 3e-3 - 1" in capsys.readouterr().out
    assert plan.main(["widen", str(tmp_path / "work")]) == 1  # their scores are pending
    assert "no validation BLEU yet for adam-lr3e-3-seed1" in capsys.readouterr().err
