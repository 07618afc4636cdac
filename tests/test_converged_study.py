"""studies/multi30k --converged: the whole converged study on a micro configuration of real Multi30k
lines (started in the background, killed during a grid run, resumed), and its budget rule, statistics
and grid widening on constructed inputs."""

import io
import json
import math
import os
import re
import signal
import statistics
import subprocess
import tarfile
import time

import pytest

from conftest import REPO
from study_helpers import (  # noqa: F401  (real_subset: a fixture)
    TINY_FLAGS, bleu, check_ok, fabricate_study, needs_real_data, real_subset, run_study, write_run,
)
from studies.multi30k import budget, converged_report, plan, progress, stats
from studies.multi30k.settings import read_settings
from studies.multi30k.train_log import parse_train_log

CONVERGED_MICRO = {
    "ADAM_LRS": "1e-3", "SAGE_LRS": "3e-3", "SAGE_BETA0S": "0.8", "SEEDS": "1 2", "MAX_WIDEN": "0",
    "BUDGET_LR": "1e-3", "BUDGET_MAX_UPDATE": "30", "BUDGET_MIN_GAIN": "100", "AVERAGE_LAST": "2",
    "MAX_TOKENS": "1024", "WARMUP_UPDATES": "2", "LOG_INTERVAL": "1", "SPM_VOCAB_SIZE": "1000",
    "PRUNE_LEVELS": "0,20", "PRUNE_BATCHES": "1", "JOBS": "1", "PROGRESS_INTERVAL": "300",
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
    resumed in the foreground, keeping its runs' records in records/ beside WORKDIR: (WORKDIR, doc, the
    launcher's output, the resumed output, the files of the first grid run before the kill with their
    mtimes)."""
    root = tmp_path_factory.mktemp("converged")
    (root / "docs").mkdir()
    doc = root / "docs" / "results.md"
    doc.write_text("# Multi30k De→En: Adam vs Adam-SAGE\n\nthe short-budget report\n")
    env = {**CONVERGED_MICRO, "RESULTS_DOC": str(doc), "MULTI30K_SHA256SUMS": str(real_subset / "SHA256SUMS"),
           "RECORDS": str(root / "records")}
    workdir = root / "work"
    args = ["--converged", "--data", real_subset, workdir, "--", *TINY_FLAGS]
    # a refresh every 2 s while it runs in the background (each costs a Python start), none after
    launcher = check_ok(run_study(*args, env={**env, "PROGRESS_INTERVAL": "2"}))
    first, second = CONVERGED_RUNS["adam"][0], CONVERGED_RUNS["adam_sage"][0]
    pid = int(re.search(r"process group (\d+)", launcher.stdout).group(1))

    def running():
        return subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 0

    def second_started():
        return (workdir / "runs" / first / ".steps" / f"{first}.train.done").is_file() and (
            workdir / "runs" / second / "checkpoints" / "adam_sage" / "train.log").is_file()

    wait_for(lambda: second_started() or not running(), 600, "the second grid run to start")
    assert second_started(), (workdir / "study.log").read_text()
    # PROGRESS_INTERVAL=2: progress.md is refreshed while the run trains (no run ends in 6 s)
    updated = (workdir / "progress.md").read_text().splitlines()[2]
    wait_for(lambda: (workdir / "progress.md").read_text().splitlines()[2] != updated, 6, "progress.md to be refreshed")
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not running(), 30, "the killed study to end")
    kept = {p: p.stat().st_mtime_ns for p in (workdir / "runs" / first / "checkpoints").rglob("*.pt")}
    resumed = check_ok(run_study("--converged", "--foreground", *args[1:], env={**env, "JOBS": "2"}))
    wait_for(lambda: subprocess.run(["pgrep", "-f", f"converged.sh .*{workdir}"]).returncode == 1, 10,
             "the progress refresher to end with the study")
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
    assert summary["cost"]["adam"]["runs"] == summary["cost"]["adam_sage"]["runs"] == 2

    text = doc.read_text()
    assert text.startswith("# Multi30k De→En: Adam vs Adam-SAGE\n\n<!-- converged study")
    assert text.rstrip().endswith("the short-budget report")  # the short-budget report is kept
    assert "**Complete:**" in text
    assert "| Adam | 1e-3 | – | 2 of 2 | 1.000 | 1.00e-03 |" in text  # the seeds the cost row averages
    for test in ("test2016", "test2017"):
        assert re.search(rf"^- {test}: Adam-SAGE [+-]\d+\.\d\d ± \d+\.\d\d BLEU .*, (not significant|significant: Adam(-SAGE)? beats Adam(-SAGE)?); "
                         r"paired bootstrap of the best seed pair: p = 0\.\d{4}( \(.+\))?\.$", text, re.M), text
    for name in ("budget.png", "validation_curves.png", "sage_multiplier.png", "pruning.png"):
        assert (workdir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/multi30k/converged/{name})" in text
    assert "No β0 × lr heatmap: the grid holds one setting per optimizer.\n" in text  # (the micro grid)
    assert not (workdir / "figures" / "beta0_lr_heatmap.png").exists()
    for optimizer, runs in CONVERGED_RUNS.items():  # every seed's averaged model is pruned
        for run in runs:
            rows = (workdir / "runs" / run / "analysis" / "pruning_bleu.csv").read_text().splitlines()
            assert rows[0].startswith("prune_percent") and len(rows) == 3  # PRUNE_LEVELS=0,20


def record_members(path):
    with tarfile.open(path) as tar:
        return tar.getnames()


@needs_real_data
def test_a_new_workdir_restores_the_runs_from_their_records_and_trains_what_a_record_lacks(
        converged_study, real_subset, tmp_path):
    workdir, _, _, _, _ = converged_study
    records = workdir.parent / "records"
    names = [run for runs in CONVERGED_RUNS.values() for run in runs]
    assert sorted(p.name for p in records.iterdir()) == sorted(f"{name}.tar.gz" for name in names)
    for name in names:
        path = records / f"{name}.tar.gz"
        assert path.stat().st_mode & 0o777 == 0o644
        members = record_members(path)
        optimizer = name.split("-")[0]
        assert not [m for m in members if m.endswith(".pt")]  # no checkpoint
        for member in (f".steps/{name}.pruning.done", f"checkpoints/{optimizer}/train.log",
                       f"eval/{optimizer}/checkpoint_avg/test2016.hyp", "analysis/pruning_bleu.csv"):
            assert member in members, (name, members)
    # the first seed's record as a study interrupted after the grid leaves it: no test scores yet
    retrained = CONVERGED_RUNS["adam"][0]
    with tarfile.open(records / f"{retrained}.tar.gz") as tar:
        kept = [m for m in tar.getmembers() if not re.search(r"\.(test|pruning)\.done$|^eval/adam/checkpoint_avg/test|"
                                                                r"^eval/adam/test|^analysis/", m.name)]
        files = {m.name: tar.extractfile(m).read() for m in kept}
    with tarfile.open(records / f"{retrained}.tar.gz", "w:gz") as tar:
        for member in kept:
            tar.addfile(member, io.BytesIO(files[member.name]))
    restored = set(names) - {retrained}
    before = {name: (records / f"{name}.tar.gz").read_bytes() for name in restored}

    fresh = tmp_path / "work"
    budget_updates = json.loads((workdir / "budget.json").read_text())["budget"]
    env = {**CONVERGED_MICRO, "BUDGET": str(budget_updates), "RECORDS": str(records),
           "RESULTS_DOC": str(tmp_path / "results.md"), "MULTI30K_SHA256SUMS": str(real_subset / "SHA256SUMS")}
    out = check_ok(run_study("--converged", "--foreground", "--data", real_subset, fresh, "--", *TINY_FLAGS, env=env))
    assert f"budget: {budget_updates} updates per run, given (BUDGET)" in out.stdout
    assert not (fresh / "runs" / "budget").exists()  # BUDGET: no budget run
    assert re.search(rf"estimate: 2 grid runs \+ 2 more seeds = 4 training runs, {budget_updates} updates each "
                     r"\(BUDGET\)", (fresh / "progress.md").read_text())
    for name in names:
        assert f"{name}: restored from {records}/{name}.tar.gz" in out.stdout, out.stdout
        assert (fresh / "runs" / name / "logs" / "train.out").is_file() == (name == retrained)
    assert {name: (records / f"{name}.tar.gz").read_bytes() for name in restored} == before
    assert f".steps/{retrained}.pruning.done" in record_members(records / f"{retrained}.tar.gz")  # recorded anew

    old = json.loads((workdir / "results" / "summary.json").read_text())["statistics"]
    new = json.loads((fresh / "results" / "summary.json").read_text())["statistics"]
    for key, entry in old.items():
        for optimizer, runs in CONVERGED_RUNS.items():
            for run in runs:
                if run in restored:
                    seed = run[-1]
                    assert new[key]["per_seed"][optimizer][seed] == entry["per_seed"][optimizer][seed]
    text = (tmp_path / "results.md").read_text()
    assert "**Complete:**" in text
    sage_grid = CONVERGED_RUNS["adam_sage"][0]  # restored: finished, so the grid table shows its numbers
    valid = bleu(fresh / "runs" / sage_grid / "eval" / "adam_sage" / "checkpoint_avg" / "valid.sacrebleu.json")
    assert not (fresh / "runs" / sage_grid / "checkpoints" / "adam_sage" / "train.done").exists()
    assert f"| Adam-SAGE | 3e-3 | 0.8 | {valid:.2f} |" in text, text
    assert (fresh / "figures" / "pruning.png").is_file()


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
        f"difference over 5 seeds), not significant")
    assert abs(statistics.mean(differences)) <= half  # (what the line claims)
    ahead = {1: 30.5, 2: 31.8, 3: 30.0, 4: 31.2, 5: 30.7}  # Adam + 0.4 to 0.6 on every seed
    assert stats.verdict("test2016", stats.paired_difference(adam, ahead)).endswith(
        "BLEU (95 % CI of the paired difference over 5 seeds), significant: Adam-SAGE beats Adam")
    assert stats.verdict("test2016", stats.paired_difference(ahead, adam)).endswith(  # the other way round
        ", significant: Adam beats Adam-SAGE")
    noisy = stats.paired_difference(adam, {1: 32.0, 2: 29.0, 3: 31.0, 4: 29.5, 5: 31.5})
    assert stats.verdict("test2017", noisy).endswith(", not significant")
    assert stats.t_interval([31.0])["half_width"] is None


def test_the_bootstrap_p_value_is_explained_only_where_it_disagrees_with_the_seeds():
    """A best-pair p below 0.05 beside an interval over seeds that holds 0 (the converged test2017) gets
    a reading; p and interval that agree get none."""
    assert stats.bootstrap_reading(0.2108, False) == ""
    assert stats.bootstrap_reading(0.0100, True) == ""
    assert stats.bootstrap_reading(0.0030, False).startswith(" (below 0.05: these two models differ")
    assert stats.bootstrap_reading(0.0500, True).startswith(" (0.05 or above: these two models do not differ")
    assert stats.significant({"mean": -0.72, "half_width": 0.96}) is False
    assert stats.significant({"mean": 0.61, "half_width": 0.60}) is True
    assert stats.significant({"mean": 0.61, "half_width": None}) is False


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


def test_progress_names_the_widening_a_best_lr_at_an_edge_makes_likely(tmp_path):
    workdir = tmp_path / "work"
    scores = {"adam-lr1e-3-seed1": (30.0, 4.0), "adam-lr2e-3-seed1": (31.0, 4.2),  # best at the top
              "adam_sage-lr2e-3-b0.6-seed1": (29.0, 4.0)}  # the other Adam-SAGE runs still train
    fabricate_study(workdir, scores, {})
    with (workdir / "study.env").open("a") as env:
        env.write("MAX_WIDEN=1\nJOBS=2\n")
    # no run has a wall time: the constants' rate, 600 × (0.55 + 8 / 130) s = 0.1 h
    assert progress.widening_note(workdir, read_settings(workdir)) == (
        "not counted yet: the best lr scored so far is the top of Adam's grid (lr 2e-3) and the bottom of "
        "Adam-SAGE's grid (lr 2e-3); widening adds 1 to Adam's and 2 to Adam-SAGE's (training runs of about "
        "0.1 h at this rate)")
    # Adam's grid widened once (MAX_WIDEN=1): 2e-3 is no edge and no more lrs may come; Adam-SAGE's best
    # is now 5e-3 at β0 0.9, the top of its grid
    (workdir / "widened.json").write_text('{"ADAM_LRS": ["3e-3"]}')
    write_run(workdir, "adam_sage-lr5e-3-b0.9-seed1", 4.0, {"valid": 29.5})
    assert progress.widening_note(workdir, read_settings(workdir)) == (
        "not counted yet: the best lr scored so far is the top of Adam-SAGE's grid (lr 5e-3); widening adds "
        "2 to Adam-SAGE's (training runs of about 0.1 h at this rate)")
    (workdir / "widened.json").write_text('{"ADAM_LRS": ["3e-3"], "SAGE_LRS": ["8e-3"]}')
    assert progress.widening_note(workdir, read_settings(workdir)) is None


def test_converged_report_of_a_running_study_shows_the_scored_grid_runs_and_no_verdict(tmp_path):
    workdir = tmp_path / "work"
    settings = {**CONVERGED_MICRO, "ADAM_LRS": "1e-3 2e-3", "BUDGET_TAIL": "0.2", "MAX_UPDATE": "budget",
                "SELECTION_MODEL": "checkpoint_avg", "MAX_TRAIN_LINES": "all", "MAX_TEST_LINES": "all",
                "TRAIN_FLAGS": "", "PRUNE_SUBSET": "test", "DATA": "", "OVERRIDDEN": ""}  # fmt: skip
    workdir.mkdir()
    (workdir / "study.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    done = workdir / "runs" / "adam-lr1e-3-seed1"
    (done / "checkpoints" / "adam").mkdir(parents=True)
    (done / "checkpoints" / "adam" / "train.log").write_text(
        "2026 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 5.5 | bleu 20.1 | num_updates 15\n"
        "2026 | INFO | valid | epoch 002 | valid on 'valid' subset | loss 5.25 | bleu 24.3 | num_updates 30\n")
    (done / "checkpoints" / "adam" / "train.done").write_text("fairseq-train ...\n")
    (done / "eval" / "adam" / "checkpoint_avg").mkdir(parents=True)
    (done / "eval" / "adam" / "checkpoint_avg" / "valid.sacrebleu.json").write_text('{"score": 25.75}')
    running = workdir / "runs" / "adam-lr2e-3-seed1" / "checkpoints" / "adam"
    running.mkdir(parents=True)
    (running / "train.log").write_text(
        "2026 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 6.5 | bleu 11.0 | num_updates 15\n")
    doc = tmp_path / "results.md"
    short = ("- test2016: Adam-SAGE 27.46 vs Adam 27.75, a difference of -0.29 BLEU: no clear difference.\n"
             "- test2017: Adam-SAGE 22.70 vs Adam 22.08, a difference of +0.62 BLEU: Adam-SAGE beats Adam.\n")
    doc.write_text(f"# Multi30k\n\n## Findings\n\n{short}\n## Pruning\n\n- test2016: Adam-SAGE not a verdict\n")
    assert converged_report.main([str(workdir), "--doc", str(doc)]) == 0
    text = doc.read_text()
    verdicts = text.split("### Verdict", 1)[1].split("###", 1)[0]
    assert verdicts.endswith(f"[its findings](#findings)):\n\n{short}\n")  # the short budget's, beside it
    assert converged_report.main([str(workdir), "--doc", str(doc)]) == 0  # again: the same, not quoted twice
    assert doc.read_text() == text and text.count("27.46 vs Adam 27.75") == 2
    assert "**Partial results.** The converged study is running: 1 of 3 grid runs are finished and scored" in text
    assert "| Adam | 1e-3 | – | 25.75 | 5.250 |" in text
    assert "| Adam | 2e-3 | – | pending | pending | pending | 15 so far | pending |" in text
    assert "**Results pending: the study has not finished.**" in text and "6.500" not in text
    assert "Results pending until every seed is scored.\n" in text  # no best setting yet: no count
    assert "Adam-SAGE +" not in text and "Adam-SAGE -" not in text  # no verdict line
    assert "Adam-SAGE validation BLEU, β0 × lr:" in text and "(figures/multi30k/converged/beta0_lr_heatmap.png)" in text


def test_a_grid_of_one_setting_each_shows_no_beta0_lr_heatmap(tmp_path):
    workdir = tmp_path / "work"
    settings = {**CONVERGED_MICRO, "BUDGET": "30", "BUDGET_TAIL": "0.2", "MAX_UPDATE": "30",
                "SELECTION_MODEL": "checkpoint_avg", "MAX_TRAIN_LINES": "all", "MAX_TEST_LINES": "all",
                "TRAIN_FLAGS": "", "PRUNE_SUBSET": "test", "DATA": "", "TUNED_BY": "an earlier grid.",
                "OVERRIDDEN": "ADAM_LRS SAGE_LRS SAGE_BETA0S BUDGET TUNED_BY"}  # fmt: skip
    workdir.mkdir()
    (workdir / "study.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    for name in ("adam-lr1e-3-seed1", "adam_sage-lr3e-3-b0.8-seed1"):
        write_run(workdir, name, 5.0, {})
        averaged = workdir / "runs" / name / "eval" / name.split("-")[0] / "checkpoint_avg"
        averaged.mkdir()
        scores = {"valid": 30.0, "test2016": 31.0, "test2017": 27.0} if name.startswith("adam-") else {"valid": 29.0}
        for subset, score in scores.items():
            (averaged / f"{subset}.sacrebleu.json").write_text(json.dumps({"score": score}))
    (workdir / "figures").mkdir()
    (workdir / "figures" / "beta0_lr_heatmap.png").write_bytes(b"a stale 1 x 1 heatmap")
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    assert converged_report.main([str(workdir), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "**Tuned by**: an earlier grid.\n" in text
    assert "Results pending until every seed is scored (scored so far: Adam 1 of 2 seeds, Adam-SAGE 0 of 2 seeds)." in text
    note = "the grid holds one setting per optimizer (**Tuned by** in the design says where they come from).\n"
    assert f"No β0 × lr grid: {note}" in text and f"No β0 × lr heatmap: {note}" in text
    assert "β0 × lr:" not in text and "beta0_lr_heatmap" not in text
    assert not (doc.parent / "figures" / "multi30k" / "converged" / "beta0_lr_heatmap.png").exists()
    assert (workdir / "figures" / "beta0_lr_heatmap.png").read_bytes() == b"a stale 1 x 1 heatmap"  # not redrawn


POOL = """
set -euo pipefail
RECIPE=test WORKDIR=/nowhere
source recipes/common.sh
source studies/multi30k/lib.sh
process_run() {  # STAGE NAME OPTIMIZER SECONDS: a stand-in that records when it ran and with what threads
    echo "$2 start $(date +%s.%N) ${OMP_NUM_THREADS:-unset}" >> "$LOG"
    sleep "$4"
    echo "$2 end $(date +%s.%N)" >> "$LOG"
    [[ $2 != bad* ]]
}
run_finished() {  # STAGE NAME ...: the runs named done* are finished
    [[ $2 == done* ]]
}
"""


def run_pool(tmp_path, lines, jobs, alone_threads):
    log = tmp_path / "pool.log"
    log.unlink(missing_ok=True)
    script = POOL + f"JOBS={jobs} ALONE_THREADS={alone_threads}\nexport OMP_NUM_THREADS=1\nrun_all grid\n"
    process = subprocess.run(["bash", "-c", script], cwd=REPO, input="".join(f"{n} x {s}\n" for n, s in lines),
                             env={**os.environ, "LOG": str(log)}, capture_output=True, text=True)  # fmt: skip
    events = {}
    for row in log.read_text().splitlines():
        name, what, when, *threads = row.split()
        events.setdefault(name, {})[what] = float(when)
        if threads:
            events[name]["threads"] = threads[0]
    return process, events


def test_run_all_gives_the_cores_of_a_partial_last_round_to_its_runs_after_the_others_end(tmp_path):
    lines = [("a", 0.4), ("b", 0.9), ("c", 0.2), ("d", 0.5), ("e", 0.2)]
    process, events = run_pool(tmp_path, lines, jobs=2, alone_threads=2)
    assert process.returncode == 0, process.stderr
    assert [events[n]["threads"] for n, _ in lines] == ["1", "1", "1", "1", "2"]
    assert events["c"]["start"] >= events["a"]["end"] and events["d"]["start"] >= events["c"]["end"]
    assert events["e"]["start"] >= max(events[n]["end"] for n in "abcd")  # alone: every core
    assert "e: one of the last 1 of the grid, 2 threads" in process.stdout

    process, events = run_pool(tmp_path, [*lines, ("f", 0.1)], jobs=3, alone_threads=4)
    assert [events[n]["threads"] for n in "abcdef"] == ["1", "1", "1", "1", "1", "1"]  # two full rounds
    process, events = run_pool(tmp_path, lines, jobs=3, alone_threads=4)
    assert [events[n]["threads"] for n in "abcde"] == ["1", "1", "1", "2", "2"]  # the last 2 share 4
    assert min(events[n]["start"] for n in "de") >= max(events[n]["end"] for n in "abc")
    process, events = run_pool(tmp_path, [("a", 0.1), ("b", 1.5), ("c", 0.1)], jobs=2, alone_threads="")
    assert events["c"]["threads"] == "1" and events["c"]["start"] < events["b"]["end"]  # no ALONE_THREADS
    # finished runs go first, one at a time, and do not count in the rounds of the others
    process, events = run_pool(tmp_path, [("a", 0.3), ("done1", 0.1), ("b", 0.3), ("done2", 0.1), ("c", 0.2)],
                               jobs=2, alone_threads=2)  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert events["done1"]["end"] <= events["done2"]["start"] and events["done2"]["end"] <= events["a"]["start"]
    assert [events[n]["threads"] for n in ("a", "b", "c")] == ["1", "1", "2"]
    assert events["c"]["start"] >= max(events["a"]["end"], events["b"]["end"])
    process, events = run_pool(tmp_path, [("done1", 0.1), ("a", 0.3), ("b", 0.3)], jobs=2, alone_threads=2)
    assert events["a"]["threads"] == events["b"]["threads"] == "1"  # a full round: nothing left over
    assert events["b"]["start"] < events["a"]["end"]


@pytest.mark.parametrize("jobs, omp", [(2, None), (2, 3), (1, None)])
def test_share_cores_gives_each_run_its_share_and_the_leftover_runs_every_core(jobs, omp):
    # GNU nproc reports OMP_NUM_THREADS where it is set: read after the export, it gave the runs
    # run_all leaves over 1 thread (OMP_NUM_THREADS) instead of every core, and WORKERS (the
    # preprocessing's processes) followed a user's OMP_NUM_THREADS
    cores = len(os.sched_getaffinity(0))
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT", "WORKERS")}
    environment.update({"OMP_NUM_THREADS": str(omp)} if omp else {})
    script = POOL + f"JOBS={jobs}\nshare_cores\n" + 'echo "$WORKERS ${OMP_NUM_THREADS:-unset} ${ALONE_THREADS:-none}"\n'
    process = subprocess.run(["bash", "-c", script], cwd=REPO, env=environment, capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    expected = {(2, None): f"{max(cores // 2, 1)} {cores}", (2, 3): "3 none", (1, None): "unset none"}
    assert process.stdout.splitlines()[-1] == f"{cores} {expected[jobs, omp]}"


def test_run_all_stops_with_one_line_when_a_run_fails_after_all_have_ended(tmp_path):
    process, events = run_pool(tmp_path, [("bad", 0.1), ("a", 0.3), ("c", 0.1)], jobs=2, alone_threads=2)
    assert process.returncode == 1 and set(events) == {"bad", "a", "c"} and "end" in events["c"]
    assert process.stderr.strip().splitlines()[-1] == (
        "error: a run of the grid failed; its error is above, its logs in /nowhere/runs/RUN/logs")


def test_a_failed_study_can_be_rerun_at_once(tmp_path):
    # the progress refresher's sleep outlives the failed study by up to PROGRESS_INTERVAL: holding
    # the lock, it made the rerun say "a study is already running"
    env = {**CONVERGED_MICRO, "PROGRESS_INTERVAL": "60"}
    (tmp_path / "empty").mkdir()  # no Multi30k files: the data preparation fails, after the refresher started
    args = ["--converged", "--foreground", "--data", tmp_path / "empty", tmp_path / "work"]
    first = run_study(*args, env=env)
    second = run_study(*args, env=env)
    assert first.returncode != 0 and second.returncode != 0
    assert "already running" not in second.stdout + second.stderr
    assert "the step above failed" in second.stderr and second.stderr.splitlines()[-1] == first.stderr.splitlines()[-1]


def test_bad_converged_settings_stop_with_one_line(tmp_path):
    cases = {
        "PROGRESS_INTERVAL=often": "error: PROGRESS_INTERVAL=often: must be a positive integer",
        "BUDGET_TAIL=1.5": "error: BUDGET_TAIL=1.5: give a fraction in (0, 1) like 0.2",
        "JOBS=0": "error: JOBS=0: must be a positive integer",
        "BUDGET=2k": "error: BUDGET=2k: must be a positive integer",
    }
    for setting, message in cases.items():
        key, value = setting.split("=", 1)
        result = run_study("--converged", "--plan", tmp_path / "work", env={key: value})
        assert result.returncode == 1 and result.stderr.strip() == message, setting
    assert not (tmp_path / "work" / "study.env").exists()


def test_the_readme_quotes_the_converged_verdict_of_docs_results():
    """The README's quickstart paragraph quotes, per test set, the paired difference, its interval and
    significance that docs/results.md's converged verdict states (so a rerun of the study that changes
    the verdict cannot leave the README quoting the old one)."""
    results = (REPO / "docs" / "results.md").read_text()
    readme = " ".join((REPO / "README.md").read_text().split())  # the paragraph's line breaks folded
    verdict = results.split("### Verdict", 1)[1].split("###", 1)[0]
    for test in ("test2016", "test2017"):
        found = re.search(rf"^- {test}: Adam-SAGE ([+-]\d+\.\d\d) ± (\d+\.\d\d) BLEU \(95 % CI of the paired "
                          rf"difference over (\d+) seeds\), (not significant|significant: [^;]+); paired bootstrap "
                          rf"of the best seed pair: p = (\d\.\d{{4}})(?: \(.+\))?\.$", verdict, re.M)
        assert found, f"docs/results.md has no converged verdict for {test}:\n{verdict}"
        mean, half, seeds, significance, p_value = found.groups()
        quote = (f"{test}: Adam-SAGE {mean} ± {half} BLEU over {seeds} seeds, {significance} "
                 f"(paired bootstrap of the best seed pair: p = {p_value})")
        assert quote in readme, f"README.md should quote: {quote}"
