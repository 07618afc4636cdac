"""fairseq-sage-study: a whole tiny study killed mid-training and resumed; configuration errors; the
statistics, widening, budget rule, time to target, prunability and the report's sections of them against
values worked out by hand; the launchers."""

import fcntl
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_TRANSFORMER
from forked_cli import python_shim
from fairseq_sage.tools.entry_points import reader_may_close
from fairseq_sage.tools.study import cli
from fairseq_sage.tools.study.config import StudyConfig
from fairseq_sage.tools.study.launch import LocalLauncher, SubmititLauncher
from fairseq_sage.tools.study.plan import Run, beyond, budget_from_curve, number, widen
from fairseq_sage.tools.study.report import Report, prunable_level, time_to_target
from fairseq_sage.tools.study.stats import paired_bootstrap, paired_difference, t_interval
from fairseq_sage.tools.study.steps import StepError, parse_json_log, read_csv, write_record
from fairseq_sage.tools.study.study import Progress, outcome

TINY_STUDY = """
name = "tiny"
workdir = "work"
records = "records"
jobs = 2

[data]
data_bin = "{data_bin}"
source_lang = "src"
target_lang = "tgt"
sets.valid = {{ subset = "valid", reference = "{corpus}/valid.tgt" }}
sets.test = {{ subset = "test", reference = "{corpus}/test.tgt" }}

[train]
max_update = 24
average_last = 2
flags = {flags}

[optimizers.adam]
label = "Adam"
flags = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)"]
grid = {{ lr = [3e-3, 1e-2] }}

[optimizers.adam_sage]
label = "Adam-SAGE"
flags = ["--optimizer", "adam_sage", "--adam-betas", "(0.9, 0.98)", "--sage-beta0", "0.8"]
grid = {{ lr = [1e-2] }}

[selection]
seeds = [1, 2]
max_widen = 0

[score]
models = ["checkpoint_avg"]
sets = ["test"]
beam = 2

[pruning]
levels = [0, 50]
set = "test"
model = "checkpoint_avg"
batches = 1

[report]
title = "Tiny study"
"""

TRAIN_FLAGS = [*TINY_TRANSFORMER, "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "5", "--max-tokens", "400",
               "--cpu", "--num-workers", "0", "--data-buffer-size", "0", "--log-interval", "4", "--eval-bleu",
               "--eval-bleu-args", '{"beam": 1}', "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]


def write_study(folder: Path, data_bin: Path, text: str = TINY_STUDY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.toml"
    path.write_text(text.format(data_bin=data_bin, corpus=data_bin.parent, flags=json.dumps(TRAIN_FLAGS)))
    return path


STUDY_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def study_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m fairseq_sage.tools.study ARGS``, it and the runs it starts forked (python_shim)."""
    return subprocess.run([str(python_shim()), "-m", "fairseq_sage.tools.study", *map(str, args)], capture_output=True,
                          text=True, env=STUDY_ENV, **kwargs)


def test_a_tiny_study_killed_mid_training_resumes_to_the_report_its_records_give(toy_data_bin, tmp_path):
    config = write_study(tmp_path / "study", toy_data_bin)
    work = tmp_path / "study" / "work"
    # a real process (killed with its group, it holds no lock a moment longer) whose runs are forked
    start = (f"import runpy, sys; sys.executable = {str(python_shim())!r}; "
             "runpy.run_module('fairseq_sage.tools.study', run_name='__main__', alter_sys=True)")
    process = subprocess.Popen([sys.executable, "-c", start, "run", str(config)], env=STUDY_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list(work.glob("runs/*/checkpoints/checkpoint_last.pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    interrupted = [p.parents[1] for p in work.glob("runs/*/checkpoints/checkpoint_last.pt")
                   if not (p.parents[1] / "train.json").exists()]
    assert interrupted, "the study was not killed while a run trained"

    resumed = study_cli("run", config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = sorted((tmp_path / "study" / "records").glob("*.json.gz"))
    assert len(records) == 5  # Adam's 2 lrs and Adam-SAGE's 1 (seed 1), then seed 2 of each best setting
    for run_dir in interrupted:  # resumed from its checkpoint by fairseq-train, trained to the budget
        assert "Loaded checkpoint" in (run_dir / "logs" / "train.out").read_text()
        record = json.loads(gzip.decompress((tmp_path / "study" / "records" / f"{run_dir.name}.json.gz").read_bytes()))
        assert record["curve"][-1]["num_updates"] == 24
    report = (work / "report.md").read_text()
    assert "| adam-lr=3e-3-seed=1 | 24 / 24 |" in (work / "progress.md").read_text()

    # the verdict's paired difference, from the records by hand
    recs = {p.name: json.loads(gzip.decompress(p.read_bytes())) for p in records}
    pair = json.loads((tmp_path / "study" / "records" / "paired_bootstrap.json").read_text())["pair"]
    best = {opt: name.rsplit("-seed=", 1)[0] for opt, name in pair.items()}
    bleu = {opt: [recs[f"{best[opt]}-seed={s}.json.gz"]["scores"]["checkpoint_avg"]["test"]["bleu"] for s in (1, 2)]
            for opt in best}
    mean = sum(bleu["adam_sage"]) / 2 - sum(bleu["adam"]) / 2
    assert f"- test: Adam-SAGE {mean:+.2f} ± " in report
    assert "![pruning.png](figures/pruning.png)" in report and (work / "figures" / "pruning.png").is_file()

    # the report is a function of the records alone: without the work folder, the same text
    subprocess.run(["rm", "-r", str(work)], check=True)
    again = study_cli("report", config)
    assert again.returncode == 0, again.stderr
    assert (work / "report.md").read_text() == report
    status = study_cli("status", config)
    assert status.returncode == 0 and "| adam-lr=3e-3-seed=1 | 24 / 24 |" in status.stdout


@pytest.mark.parametrize("edit, message", [
    (("[selection]", "[selection]\ncolour = 1"), "selection.colour: unknown key"),
    (("lr = [3e-3, 1e-2] }}\n\n[optimizers.adam_sage]", 'lr = [3e-3, "1e-2"] }}\n\n[optimizers.adam_sage]'),
     "optimizers.adam.grid.lr.1: should be a number (got '1e-2')"),
    (("[selection]", '[selection]\nset = "dev"'), "selection.set: 'dev' is not one of data.sets (valid, test)"),
    (("batches = 1", 'batches = 1\nby = ["sensitivity", "weight"]'),
     "pruning.by.1: Input should be 'sensitivity' or 'magnitude' (got 'weight')"),
    (("levels = [0, 50]", "levels = [10, 50]"),
     "pruning.levels: include 0 (the unpruned BLEU that prunability is measured from)"),
])
def test_a_config_error_is_one_line_naming_the_key(tmp_path, capsys, edit, message):
    config = write_study(tmp_path, Path("/nowhere/data-bin"), TINY_STUDY.replace(*edit))
    assert cli.main(["plan", str(config)]) == 1
    assert capsys.readouterr().err == f"fairseq-sage-study: error: {config}: {message}\n"


def test_a_missing_data_folder_is_one_line_naming_the_path(tmp_path, capsys):
    config = write_study(tmp_path, tmp_path / "missing" / "data-bin")
    assert cli.main(["run", str(config)]) == 1
    assert capsys.readouterr().err == (f"fairseq-sage-study: error: data.data_bin: {tmp_path}/missing/data-bin: no "
                                       "such folder (give a fairseq data-bin or data.prepare)\n")
    assert not (tmp_path / "work" / "runs").exists()


def test_t_interval_and_paired_difference_by_hand():
    # mean 2.5, s = sqrt(((1.5² + 0.5²) · 2) / 3) = 1.2910, t_{0.975, 3} = 3.182446 (tables), half = t·s/√4
    result = t_interval([1.0, 2.0, 3.0, 4.0])
    assert result["mean"] == 2.5 and result["half_width"] == pytest.approx(3.182446 * 1.2909944 / 2, rel=1e-6)
    assert t_interval([5.0])["half_width"] is None
    # differences 1, 2, 0 over three seeds (a seed missing in one is left out): mean 1, s = 1, t_{0.975, 2} = 4.302653
    difference = paired_difference({1: 10.0, 2: 10.0, 3: 10.0, 4: 9.0}, {1: 11.0, 2: 12.0, 3: 10.0})
    assert difference["per_seed"] == {1: 1.0, 2: 2.0, 3: 0.0}
    assert difference["mean"] == 1.0 and difference["half_width"] == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)


def test_paired_bootstrap_is_sacrebleus_paired_bs(tmp_path):
    references = [f"the cat number {i} sat on the mat" for i in range(30)]
    baseline = [f"the cat {i} sat on a mat" if i % 3 else f"a dog {i} ran" for i in range(30)]
    other = [f"the cat number {i} sat on a mat" if i % 2 else f"the dog {i} sat" for i in range(30)]
    # identical systems: the centred resampled differences (all 0) never exceed the real one (0): p = 1 / 1001
    assert paired_bootstrap(baseline, baseline, references) == pytest.approx(1 / 1001)
    for name, lines in (("ref", references), ("baseline", baseline), ("other", other)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    cli_run = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref"), "-i", str(tmp_path / "baseline"),
                              str(tmp_path / "other"), "--paired-bs", "-m", "bleu", "--format", "json"],
                             capture_output=True, text=True, check=True)
    expected = json.loads(cli_run.stdout)[1]["BLEU"]["p_value"]
    assert 0 < expected < 1 and paired_bootstrap(baseline, other, references) == pytest.approx(expected, abs=1e-4)


def test_widening_adds_one_value_beyond_each_edge_by_hand(tmp_path):
    assert beyond([1e-3, 2e-3], 2e-3, None) == 3e-3 and beyond([2e-3, 4e-3], 2e-3, None) == 1e-3  # above 0: halved
    assert beyond([0.6, 0.8], 0.8, [0, 1]) == 0.9  # 1.0 reaches the limit: halfway to it
    assert number(0.012) == "1.2e-2" and number(6e-3) == "6e-3" and number(0.6) == "0.6"
    text = TINY_STUDY.replace("max_widen = 0", "max_widen = 1").replace("lr = [1e-2]", "lr = [3e-3, 1e-2]")
    config = StudyConfig(write_study(tmp_path, tmp_path, text))
    grids = {"adam": {"lr": [3e-3, 1e-2]}, "adam_sage": {"lr": [3e-3, 1e-2]}}  # the widening of a 2-lr grid
    chosen = {"adam": Run("adam", (("lr", 1e-2),), 1), "adam_sage": Run("adam_sage", (("lr", 3e-3),), 1)}
    wider = widen(config.study, grids, chosen)
    assert wider == {"adam": {"lr": [3e-3, 1e-2, 1.7e-2]}, "adam_sage": {"lr": [1.5e-3, 3e-3, 1e-2]}}
    assert widen(config.study, wider, {"adam": Run("adam", (("lr", 1.7e-2),), 1), "adam_sage": chosen["adam_sage"]}) == wider


def test_budget_rule_by_hand():
    class Rule:
        smooth, tail, min_gain = 1, 0.5, 0.5
    curve = [{"num_updates": u, "bleu": b, "loss": 1} for u, b in [(100, 10), (200, 14), (300, 15), (400, 15.2), (500, 15.3)]]
    # at 400: the best up to 200 is 14, gain 1.2; at 500: best up to 250 is 14, gain 1.3; never < 0.5 -> the last
    assert budget_from_curve(curve, Rule)["budget"] == 500
    Rule.min_gain = 1.25  # at 400: 15.2 - 14 = 1.2 < 1.25
    assert budget_from_curve(curve, Rule)["budget"] == 400


def test_fairseq_json_log_is_read_as_data():
    lines = ['2026-01-01 00:00:00 | INFO | fairseq_cli.train | {\'common\': {}}',
             '{"epoch": 1, "update": 0.5, "loss": "6.8", "num_updates": "5", "sage_mult_mean": "0.5"}',
             '2026-01-01 00:00:01 | INFO | valid | {"epoch": 1, "valid_loss": "5.9", "valid_bleu": "0.13", "valid_num_updates": "11"}',
             '{"epoch": 1, "train_loss": "6.6", "train_wps": "8625.6", "train_num_updates": "11"}',
             '{"epoch": 2, "valid_loss": "5.0", "valid_bleu": "1.5", "valid_num_updates": "11"}']  # a resumed run's redo
    log = parse_json_log(lines)
    assert log["train"] == [{"epoch": 1.0, "update": 0.5, "loss": 6.8, "num_updates": 5.0, "sage_mult_mean": 0.5}]
    assert log["valid"] == [{"epoch": 2.0, "loss": 5.0, "bleu": 1.5, "num_updates": 11.0}]
    assert log["epochs"] == [{"epoch": 1.0, "loss": 6.6, "wps": 8625.6, "num_updates": 11.0}]


def test_progress_counts_a_resumed_runs_updates_and_only_those_trained_since_for_its_rate(tmp_path):
    """A resumed fairseq-train appends its configuration (many lines without an update count) and then
    redoes the updates after its checkpoint: the run's progress stays at the most any process logged, so
    the ETA's rate counts only updates trained since ``run`` started."""
    progress = Progress(StudyConfig(write_study(tmp_path, tmp_path)))
    progress.runs = {"adam-lr=3e-3-seed=1": 24}
    log = tmp_path / "work" / "runs" / "adam-lr=3e-3-seed=1" / "logs" / "train.out"
    log.parent.mkdir(parents=True)
    first = ['{"epoch": 1, "update": 0.9, "loss": "6.8", "num_updates": "10"}',
             '{"epoch": 1, "train_loss": "6.6", "train_num_updates": "12"}']
    log.write_text("\n".join(first + ["{'common': {'log_interval': 4}}"] * 80) + "\n")  # the resumed process's start
    assert progress.updates("adam-lr=3e-3-seed=1") == 12
    assert "12 updates left" in progress.table()
    with open(log, "a") as out:  # it redoes updates 11 and 12 from its checkpoint at 10, then trains on
        out.write('{"epoch": 2, "update": 1.1, "loss": "6.5", "num_updates": "11"}\n')
    assert progress.updates("adam-lr=3e-3-seed=1") == 12
    progress.start -= 100  # 100 s later
    with open(log, "a") as out:
        out.write('{"epoch": 2, "valid_loss": "5.0", "valid_num_updates": "16"}\n')
    assert "8 updates left at 0.04 updates/s" in progress.table()  # 16 - 12 = 4 updates gained in 100 s


def test_launchers_return_results_in_order_and_raise_a_failure(tmp_path):
    assert LocalLauncher(2).launch(pow, [(2, 3), (3, 2)]) == [8, 9]
    with pytest.raises(ZeroDivisionError):
        LocalLauncher(2).launch(divmod, [(1, 0), (4, 2)])
    submitit = SubmititLauncher(tmp_path / "jobs", cluster="local", timeout_min=5)
    assert submitit.launch(pow, [(2, 3), (3, 2)]) == [8, 9]
    with pytest.raises(StepError, match="^ZeroDivisionError: integer division"):
        submitit.launch(divmod, [(1, 0)])


@pytest.mark.parametrize("study, page", [("converged", "results.md"), ("beta0_bracket", "multi30k_beta0_bracket.md")])
def test_report_regenerates_the_multi30k_pages_from_their_records(tmp_path, study, page):
    """docs/results.md is `fairseq-sage-study report studies/multi30k/converged.toml` (and the beta0 bracket's
    page that of its configuration): the same text (every BLEU, chrF, interval, p-value, cost and grid number)
    from the committed records, here written elsewhere."""
    folder = tmp_path / "studies" / "multi30k"  # the repository's layout, its records linked
    folder.mkdir(parents=True)
    (folder / "records").symlink_to(REPO / "studies" / "multi30k" / "records")
    (folder / f"{study}.toml").write_text((REPO / "studies" / "multi30k" / f"{study}.toml").read_text())
    result = study_cli("report", f"studies/multi30k/{study}.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    regenerated = (tmp_path / "docs" / page).read_text()
    assert regenerated == (REPO / "docs" / page).read_text()
    if study == "converged":
        assert "| Adam-SAGE | 1.2e-2 | 0.6 | 5 of 5 | 0.536 | 6.43e-03 | 3088 | 2671 |" in regenerated
        for name in ("validation_curves.png", "sage_multiplier.png", "pruning.png"):
            assert (tmp_path / "docs" / "figures" / "multi30k" / "converged" / name).stat().st_size > 10_000


def test_the_readme_quotes_the_converged_verdict_of_docs_results():
    """The README quotes, per test set, the paired difference, its interval and significance that
    docs/results.md's verdict states (a study whose verdict changes cannot leave the README quoting the old one)."""
    results = (REPO / "docs" / "results.md").read_text()
    readme = " ".join((REPO / "README.md").read_text().split())  # the paragraph's line breaks folded
    verdict = results.split("### Verdict", 1)[1].split("###", 1)[0]
    for test in ("test2016", "test2017"):
        found = re.search(rf"^- {test}: Adam-SAGE ([+-]\d+\.\d\d) ± (\d+\.\d\d) BLEU \(95 % CI of the paired "
                          rf"difference over (\d+) seeds\), (not significant|significant: [^;]+); paired bootstrap "
                          rf"of the best seed pair: p = (\d\.\d{{4}})(?: \(.+\))?\.$", verdict, re.M)
        assert found, f"docs/results.md has no verdict for {test}:\n{verdict}"
        mean, half, seeds, significance, p_value = found.groups()
        quote = (f"{test}: Adam-SAGE {mean} ± {half} BLEU over {seeds} seeds, {significance} "
                 f"(paired bootstrap of the best seed pair: p = {p_value})")
        assert quote in readme, f"README.md should quote: {quote}"


def test_outcome_replays_budget_selection_and_widening_from_records(tmp_path):
    """The study's decisions are functions of its records: the budget from the budget run's curve, the best
    grid run by the curve's greedy BLEU (selection without a set), an lr beyond the grid's edge, then the seeds."""
    text = (TINY_STUDY.replace("max_update = 24", 'budget_rule = {{ optimizer = "adam", setting = {{ lr = 3e-3 }}, '
                               "max_update = 40, smooth = 1, tail = 0.5, min_gain = 0.5 }}")
            .replace("max_widen = 0", "max_widen = 1"))
    config = StudyConfig(write_study(tmp_path, tmp_path, text))
    records = tmp_path / "records"

    def record(name, bleus, run=None):
        curve = [{"num_updates": 10.0 * (i + 1), "bleu": b, "loss": 5.0 - i} for i, b in enumerate(bleus)]
        write_record(records / f"{name}.json.gz", {"curve": curve, "train": [], "epochs": [], "wall_seconds": 1.0,
                                                   "scores": {}})

    assert outcome(config).max_update is None  # no budget run recorded yet
    record("budget", [10, 14, 15, 15.2])  # gains over the best up to half: at 30, 15 - 10; at 40, 15.2 - 14: none < 0.5
    result = outcome(config)
    assert result.max_update == 40 and [r.name for r in result.pending(result.grid)] == [
        "adam-lr=3e-3-seed=1", "adam-lr=1e-2-seed=1", "adam_sage-lr=1e-2-seed=1"]
    record("adam-lr=3e-3-seed=1", [1, 2])
    record("adam-lr=1e-2-seed=1", [1, 3])  # best, at the top edge: widened to 1.7e-2
    record("adam_sage-lr=1e-2-seed=1", [4])  # a one-value axis is not widened
    result = outcome(config)
    assert [r.name for r in result.pending(result.grid)] == ["adam-lr=1.7e-2-seed=1"]
    record("adam-lr=1.7e-2-seed=1", [2.5])  # worse: widening stops (and max_widen = 1 is reached)
    result = outcome(config)
    assert {o: r.name for o, r in result.chosen.items()} == {"adam": "adam-lr=1e-2-seed=1",
                                                              "adam_sage": "adam_sage-lr=1e-2-seed=1"}
    assert [r.name for r in result.pending(result.finals)] == ["adam-lr=1e-2-seed=2", "adam_sage-lr=1e-2-seed=2"]


def test_plan_counts_the_runs_left_and_their_time_at_the_measured_speed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = StudyConfig(write_study(tmp_path, tmp_path))
    assert cli.plan(config).splitlines()[0] == (
        "tiny: 3 grid runs + 1 more seeds of each of 2 best settings = 5 runs of 24 updates, 2 at once; 0 recorded "
        "in records; 5 to run: no run recorded yet to measure its speed.")
    for name, seconds in [("adam-lr=3e-3-seed=1", 2400.0), ("adam-lr=1e-2-seed=1", 1200.0)]:
        write_record(tmp_path / "records" / f"{name}.json.gz", {"curve": [{"num_updates": 24.0, "bleu": 1.0, "loss": 1.0}],
                                                                 "train": [], "epochs": [], "wall_seconds": seconds})
    lines = cli.plan(config).splitlines()
    # 3600 s over 48 updates: 75 s per update; 3 runs of 24 updates, 2 at once: 2700 s
    assert lines[0].endswith("2 recorded in records; 3 to run: ≈ 45 min of training at the 75.00 s per update (per "
                             "run, 2 at once) measured in its 2 recorded runs.")
    assert lines[1:] == ["  recorded  adam-lr=3e-3-seed=1", "  recorded  adam-lr=1e-2-seed=1",
                         "  to run    adam_sage-lr=1e-2-seed=1"]


def test_plan_into_a_pipe_its_reader_closed_exits_without_a_traceback(tmp_path):
    config = write_study(tmp_path, tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (``| head``) has gone before the first write
    with os.fdopen(write_end, "wb") as stdout:
        plan = subprocess.run([sys.executable, "-m", "fairseq_sage.tools.study", "plan", str(config)], stdout=stdout,
                              stderr=subprocess.PIPE, text=True, env=STUDY_ENV, cwd=tmp_path)
    assert (plan.returncode, plan.stderr) == (1, "")


def test_a_broken_pipe_other_than_stdout_is_still_raised(capfd):
    def entry():
        raise BrokenPipeError("a child's stdin")  # stdout (a file under capfd) is still read

    with pytest.raises(BrokenPipeError, match="a child's stdin"):
        reader_may_close(entry)()


def test_a_second_run_of_the_same_study_is_refused_while_one_runs(tmp_path, capsys):
    config = write_study(tmp_path, tmp_path / "missing")
    (tmp_path / "work").mkdir()
    with open(tmp_path / "work" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cli.main(["run", str(config)]) == 1
    assert capsys.readouterr().err == (f"fairseq-sage-study: error: {tmp_path}/work: a study is already running "
                                       "there (see its progress.md)\n")


def test_time_to_target_and_prunable_level_by_hand():
    curve = [{"num_updates": 100.0, "bleu": 30.0}, {"num_updates": 200.0, "bleu": 34.0},
             {"num_updates": 300.0, "bleu": 33.0}, {"num_updates": 400.0, "bleu": 36.5}]
    assert [time_to_target(curve, target) for target in (30, 34, 36, 37)] == [100.0, 200.0, 400.0, None]
    rows = [{"criterion": "sensitivity", "prune_percent": p, "bleu": b} for p, b in
            ((0, 40.0), (20, 39.5), (40, 38.9), (50, 39.0), (60, 30.0))]  # 40: 1.1 below; 50: exactly 1.0 below
    rows += [{"criterion": "magnitude", "prune_percent": p, "bleu": b} for p, b in ((0, 40.0), (20, 38.5))]
    assert prunable_level(rows, "sensitivity", 1.0) == 50
    assert prunable_level(rows, "sensitivity", 0.5) == 20
    assert prunable_level(rows, "magnitude", 1.0) == 0
    assert prunable_level([{"prune_percent": 0, "bleu": 5.0}, {"prune_percent": 10, "bleu": 4.5}], "sensitivity", 1) == 10


def test_report_sections_of_targets_prunability_and_sensitivity_from_records(tmp_path):
    """Records in the format of the analysis with --prune-by (criterion column, log10_var / log10_iqr,
    zero_sensitivity.csv): each section's numbers against the t-interval rule worked by hand (2 seeds:
    t_{0.975, 1} = 12.7062, half-width = t · s / √2)."""
    text = (TINY_STUDY.replace("lr = [3e-3, 1e-2]", "lr = [3e-3]")
            .replace("batches = 1", 'batches = 1\nby = ["sensitivity", "magnitude"]\ntolerance = 1.0')
            .replace('title = "Tiny study"', 'title = "Tiny study"\ntargets = [34, 36]'))
    config = StudyConfig(write_study(tmp_path, tmp_path, text))
    # (updates reaching 34, reaching 36 or None, sensitivity pruning BLEU at 0/50, magnitude at 0/50, log10_var)
    runs = {"adam-lr=3e-3-seed=1": (200, 400, (40, 39.5), (40, 30), 1.0),
            "adam-lr=3e-3-seed=2": (400, None, (40, 39.5), (40, 39.2), 2.0),
            "adam_sage-lr=1e-2-seed=1": (100, 300, (40, 35), (40, 39.5), 1.5),
            "adam_sage-lr=1e-2-seed=2": (200, 500, (40, 37), (40, 39.5), 3.5)}
    for name, (at34, at36, sensitivity, magnitude, log10_var) in runs.items():
        curve = [{"num_updates": u, "bleu": 34.0 if u == at34 else 36.0 if u == at36 else 20.0, "loss": 4.0}
                 for u in (100.0, 200.0, 300.0, 400.0, 500.0)]
        pruning = [{"criterion": c, "prune_percent": p, "bleu": b} for c, bleus in
                   (("sensitivity", sensitivity), ("magnitude", magnitude)) for p, b in zip((0, 50), bleus)]
        write_record(tmp_path / "records" / f"{name}.json.gz", {
            "curve": curve, "train": [], "epochs": [{"loss": 4.0}], "wall_seconds": 1.0,
            "scores": {"checkpoint_avg": {"test": {"bleu": 30.0, "chrf": 50.0}}}, "pruning": pruning,
            "sensitivity_by_type": [{"type": "ffn", "log10_var": log10_var, "log10_iqr": 1.0, "zero_fraction": 0.0},
                                    {"type": "attn", "log10_var": 0.5 if "sage" in name else 1.0, "log10_iqr": 1.0,
                                     "zero_fraction": 0.0}],
            "zero_sensitivity": [{"type": "ffn", "cause": "dead_relu_unit", "weights": 10.0,
                                  "fraction_of_type": 0.25 * log10_var}]})
    report = Report(config, outcome(config))
    targets = report.target_section()
    # 34: Adam 200, 400 (mean 300, s 141.42, half 1270.6); SAGE 100, 200 (150, half 635.3); paired −100, −200
    assert "| 34 | 300 ± 1271 | 150 ± 635 | -150 ± 635 | Adam 0, Adam-SAGE 0 |" in targets
    # 36: Adam only seed 1 (400: no interval); SAGE 300, 500 (400, half 1270.6); paired over seed 1 only: −100
    assert "| 36 | 400 ± – | 400 ± 1271 | -100 ± – | Adam 1, Adam-SAGE 0 |" in targets
    prunability = report.prunability_section()
    # sensitivity: Adam 50, 50; SAGE 0, 0; paired −50, −50 (s 0: half 0, significant)
    # magnitude: Adam 0, 50; SAGE 50, 50; paired +50, 0 (mean 25, s 35.36, half 317.7)
    assert "| sensitivity | 50.0 ± 0.0 | 0.0 ± 0.0 | -50.0 ± 0.0 * |" in prunability
    assert ("- sensitivity: Adam-SAGE's models are less prunable than Adam's: Δ = -50.0 ± 0.0 points of the largest "
            "pruning level within 1 BLEU of the unpruned model (95 % CI of the paired difference over 2 seeds), "
            "significant.") in prunability
    assert ("- magnitude: Adam-SAGE's models are more prunable than Adam's: Δ = +25.0 ± 317.7 points of the largest "
            "pruning level within 1 BLEU of the unpruned model (95 % CI of the paired difference over 2 seeds), "
            "not significant.") in prunability
    # BLEU at each level: sensitivity 50: Adam 39.5, 39.5; SAGE 35, 37 (36, s 1.414, half 12.71); paired -4.5, -2.5
    assert "| sensitivity | 0 | 40.00 ± 0.00 | 40.00 ± 0.00 | 0.00 ± 0.00 |" in prunability
    assert "| sensitivity | 50 | 39.50 ± 0.00 | 36.00 ± 12.71 | -3.50 ± 12.71 |" in prunability
    assert "| magnitude | 50 | 34.60 ± 58.45 | 39.50 ± 0.00 | 4.90 ± 58.45 |" in prunability  # Adam 30, 39.2: s 6.505
    assert [name for name, _ in report.figures(tmp_path / "figures")] == ["validation_curves.png", "pruning.png"]
    sensitivity = report.sensitivity_section()
    # log10_var: Adam 1, 2 (1.5, half 6.353); SAGE 1.5, 3.5 (2.5, half 12.706); paired 0.5, 1.5 (1.0, half 6.353)
    assert "| ffn | log10_var | 1.500 ± 6.353 | 2.500 ± 12.706 | 1.000 ± 6.353 |" in sensitivity
    # log10_iqr equal everywhere: a paired difference of 0 ± 0, not significant (no *)
    assert "| ffn | log10_iqr | 1.000 ± 0.000 | 1.000 ± 0.000 | 0.000 ± 0.000 |" in sensitivity
    assert "| ffn | dead_relu_unit | 0.3750 ± 1.5883 | 0.6250 ± 3.1766 | 0.2500 ± 1.5883 |" in sensitivity
    # attn: log10_var 1.0 against 0.5 at both seeds, paired -0.5 ± 0: lower, significantly
    assert ("- variance of log10 sensitivity, Adam-SAGE against Adam over 2 layer types: lower in 1 (significantly in "
            "attn), higher in 1 (significantly in none).\n") in sensitivity
    assert "- interquartile range of log10 sensitivity, Adam-SAGE against Adam over 2 layer types: lower in 0, higher in 0.\n" in sensitivity
    assert ("- ffn weights of zero sensitivity (dead_relu_unit): Adam-SAGE − Adam = +25.00 ± 158.83 % of the layer "
            "type's weights (95 % CI of the paired difference over 2 seeds), not significant.\n") in sensitivity


def test_the_analysis_csvs_are_read_with_their_names_as_text(tmp_path):
    (tmp_path / "pruning_bleu.csv").write_text("criterion,prune_percent,bleu\nmagnitude,50,31.25\n")
    (tmp_path / "zero_sensitivity.csv").write_text("type,cause,weights,fraction_of_type\nffn,dead_relu_unit,12,0.5\n")
    assert read_csv(tmp_path / "pruning_bleu.csv") == [{"criterion": "magnitude", "prune_percent": 50.0, "bleu": 31.25}]
    assert read_csv(tmp_path / "zero_sensitivity.csv") == [{"type": "ffn", "cause": "dead_relu_unit", "weights": 12.0,
                                                             "fraction_of_type": 0.5}]


def test_an_incumbent_competes_in_the_selection_while_widening_follows_the_grids_own_best(tmp_path):
    """The incumbent lr 5e-3 (below the grid) wins the selection; the grid's own best, lr 2e-2, lies at its top
    edge, so lr 3e-2 is still tried; the incumbent's seeds follow."""
    text = (TINY_STUDY.replace("grid = {{ lr = [1e-2] }}", "grid = {{ lr = [1e-2, 2e-2] }}\nincumbents = [{{ lr = 5e-3 }}]")
            .replace("lr = [3e-3, 1e-2]", "lr = [3e-3]").replace("max_widen = 0", "max_widen = 1"))
    config = StudyConfig(write_study(tmp_path, tmp_path, text))

    def record(name, bleu):
        write_record(tmp_path / "records" / f"{name}.json.gz", {
            "curve": [{"num_updates": 10.0, "bleu": bleu, "loss": 4.0}], "train": [], "epochs": [{"loss": 4.5}],
            "wall_seconds": 1.0, "scores": {}})

    assert [r.name for r in outcome(config).grid if r.optimizer == "adam_sage"] == [
        "adam_sage-lr=1e-2-seed=1", "adam_sage-lr=2e-2-seed=1", "adam_sage-lr=5e-3-seed=1"]
    for name, bleu in (("adam-lr=3e-3-seed=1", 1), ("adam_sage-lr=1e-2-seed=1", 3),
                       ("adam_sage-lr=2e-2-seed=1", 5), ("adam_sage-lr=5e-3-seed=1", 8)):
        record(name, bleu)
    result = outcome(config)
    assert [r.name for r in result.pending(result.grid)] == ["adam_sage-lr=3e-2-seed=1"]
    record("adam_sage-lr=3e-2-seed=1", 4)
    result = outcome(config)
    assert result.chosen["adam_sage"].name == "adam_sage-lr=5e-3-seed=1"
    assert [r.name for r in result.pending(result.finals)] == ["adam-lr=3e-3-seed=2", "adam_sage-lr=5e-3-seed=2"]
    grid = Report(config, result).grid_section()
    assert "| Adam-SAGE | lr 5e-3 (incumbent) | 8.00 |" in grid and "| Adam-SAGE | lr 3e-2 | 4.00 |" in grid
    assert "| Adam-SAGE | lr 3e-2 | 4.00 | 4.000 | 4.500 | – | 10 | 1 |" in grid  # no sage_mult_mean logged
    assert "selection BLEU, " not in grid  # a grid of one axis has no two-axis table


def test_a_grid_of_two_axes_is_tabled_across_both_with_its_incumbent_and_mean_multiplier(tmp_path):
    text = (TINY_STUDY.replace("grid = {{ lr = [1e-2] }}",
                               "grid = {{ lr = [1e-2, 2e-2], sage_beta0 = [0.2, 0.4] }}\n"
                               "incumbents = [{{ lr = 1e-2, sage_beta0 = 0.6 }}]")
            .replace("lr = [3e-3, 1e-2]", "lr = [3e-3]"))
    config = StudyConfig(write_study(tmp_path, tmp_path, text))
    for name, bleu in (("adam-lr=3e-3-seed=1", 1.0), ("adam_sage-lr=1e-2-sage_beta0=0.2-seed=1", 3.0),
                       ("adam_sage-lr=2e-2-sage_beta0=0.4-seed=1", 5.0), ("adam_sage-lr=1e-2-sage_beta0=0.6-seed=1", 4.0)):
        write_record(tmp_path / "records" / f"{name}.json.gz", {
            "curve": [{"num_updates": 10.0, "bleu": bleu, "loss": 4.0}], "epochs": [{"loss": 4.5}], "wall_seconds": 1.0,
            "train": [{"num_updates": 5.0, "sage_mult_mean": 0.25}, {"num_updates": 10.0, "sage_mult_mean": 0.5}],
            "scores": {}})
    grid = Report(config, outcome(config)).grid_section()
    assert "| Adam-SAGE | lr 1e-2, sage_beta0 0.2 | 3.00 | 4.000 | 4.500 | 0.375 | 10 | 1 |" in grid
    assert grid.endswith("Adam-SAGE's selection BLEU, sage_beta0 × lr:\n\n"
                         "|  | lr 1e-2 | lr 2e-2 |\n| --- | --- | --- |\n"
                         "| sage_beta0 0.2 | 3.00 | pending |\n"
                         "| sage_beta0 0.4 | pending | 5.00 |\n"
                         "| sage_beta0 0.6 | 4.00 | – |\n")


@pytest.mark.parametrize("incumbent, message", [
    ("{{ sage_beta0 = 0.6 }}", "optimizers.adam_sage: incumbents[0]: give exactly the grid's axes (lr), got sage_beta0"),
    ('{{ lr = "5e-3" }}', "optimizers.adam_sage.incumbents.0.lr: should be a number (got '5e-3')"),
])
def test_an_incumbent_without_the_grids_axes_is_one_line(tmp_path, capsys, incumbent, message):
    text = TINY_STUDY.replace("grid = {{ lr = [1e-2] }}", f"grid = {{{{ lr = [1e-2] }}}}\nincumbents = [{incumbent}]")
    config = write_study(tmp_path, Path("/nowhere/data-bin"), text)
    assert cli.main(["plan", str(config)]) == 1
    assert capsys.readouterr().err == f"fairseq-sage-study: error: {config}: {message}\n"


def test_the_reproduction_section_compares_runs_an_earlier_study_recorded(tmp_path, capsys):
    text = TINY_STUDY.replace("max_widen = 0", 'max_widen = 0\nreproduce = "earlier"')
    path = write_study(tmp_path, tmp_path, text)
    assert cli.main(["plan", str(path)]) == 1
    assert capsys.readouterr().err == (f"fairseq-sage-study: error: {path}: selection.reproduce: {tmp_path}/earlier: "
                                       "no such folder (give an earlier study's records)\n")

    def record(folder, name, bleu, loss, test):
        write_record(tmp_path / folder / f"{name}.json.gz", {
            "curve": [{"num_updates": 10.0, "bleu": bleu - 1, "loss": 5.0}, {"num_updates": 20.0, "bleu": bleu, "loss": loss}],
            "train": [], "epochs": [], "wall_seconds": 1.0, "scores": {"checkpoint_avg": {"test": {"bleu": test}}}})

    record("earlier", "adam-lr=3e-3-seed=1", 30.0, 4.0, 33.3)
    record("earlier", "adam-lr=6e-3-seed=1", 31.0, 4.0, 34.0)  # not a run of this study
    record("records", "adam-lr=3e-3-seed=1", 30.0, 4.0, 33.1)
    record("records", "adam-lr=1e-2-seed=1", 29.0, 4.1, 32.0)  # not in the earlier study
    section = Report(StudyConfig(path), outcome(StudyConfig(path))).reproduction_section()
    assert "2 of 3 figures repeated to the second decimal" in section
    assert "| adam-lr=3e-3-seed=1 | best greedy validation BLEU | 30.00 | 30.00 | +0.00 |" in section
    assert "| adam-lr=3e-3-seed=1 | BLEU, average of the last 2 epochs, test | 33.30 | 33.10 | -0.20 |" in section
    assert "adam-lr=6e-3" not in section and "adam-lr=1e-2" not in section
