"""studies/multi30k: the whole study script on a micro configuration of real Multi30k lines, and its
selection, statistics and report on fabricated run folders.

The micro study takes the first lines of every split of ../shared/data/multi30k (16 of the 1,014
`val` pairs, so that scoring validation BLEU stays cheap; prepare.sh has no setting for that), a tiny
transformer, 4 updates per run, a 1 + 1 grid and 2 seeds, and runs every step of run_study.sh.
"""

import csv
import json
import math
import re
import statistics

import pytest

from study_helpers import (REPO, TINY_FLAGS, bleu, check_ok, fabricate_study, needs_real_data,  # noqa: F401
                           real_subset, run_study, write_run)
from studies.multi30k import plan, report
from studies.multi30k.train_log import parse_train_log

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


def steps(stdout):
    """{step: 'ran' | 'skipped'} from the study's progress lines."""
    return {name: "skipped" if skip else "ran" for skip, name in STEP_LINE.findall(stdout)}


def snapshot(folder):
    """{path: modification time} of every file under ``folder`` except the step markers and the log of
    prepare.sh (which is run every time, to skip its own finished steps)."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and ".steps" not in p.parts and p.name != "prepare.out"}


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


@pytest.mark.parametrize("study", [[], ["--converged"]], ids=["short-budget", "converged"])
def test_plan_without_results_doc_leaves_docs_results_as_it_is(tmp_path, study):
    """A plan is a preview: without RESULTS_DOC it writes WORKDIR/results.md only, never the repository's
    docs/results.md, which holds the finished studies' results."""
    doc = REPO / "docs" / "results.md"
    before = doc.read_bytes()
    result = check_ok(run_study(*study, "--plan", tmp_path / "work"))
    assert result.stdout.strip().endswith(f"report: {tmp_path / 'work' / 'results.md'}")
    assert doc.read_bytes() == before
    assert "Results pending" in (tmp_path / "work" / "results.md").read_text()


# ---- selection, statistics and report on fabricated run folders (no training)


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


def test_grid_table_shows_an_unfinished_run_as_pending_with_its_updates_so_far(tmp_path):
    partial = dict(list(GRID_SCORES.items())[:-1])
    fabricate_study(tmp_path / "work", partial, {})
    running = tmp_path / "work" / "runs" / "adam_sage-lr5e-3-b0.9-seed1" / "checkpoints" / "adam_sage"
    running.mkdir(parents=True)
    (running / "train.log").write_text(
        "2026 | INFO | train_inner | epoch 001:     25 / 253 loss=9.5, num_updates=25, lr=0.0001, wall=38\n"
        "2026 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 6.25 | num_updates 300\n")
    assert report.main([str(tmp_path / "work"), "--doc", str(tmp_path / "results.md")]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "| Adam-SAGE | 5e-3 | 0.9 | pending | pending | pending | 300 so far | pending |" in text
    assert "6.250" not in text and "| Adam | 2e-3 | – | 31.00 | 4.200 |" in text


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
2026-11-22 10:01:43 | INFO | fairseq.checkpoint_utils | Saved checkpoint checkpoint_last.pt (epoch 1 @ 50 updates, score None) (writing took 0.1 seconds)
2026-11-22 10:02:44 | INFO | train_inner | epoch 001:     75 / 253 loss=8.9, num_updates=75, lr=0.0003, wall=162
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


def test_wall_time_of_a_resumed_run_adds_up_the_time_its_processes_kept_from_the_log_timestamps():
    log = parse_train_log(RESUMED_LOG)
    # 10:00:02 → 10:02:44 and 10:30:05 → 10:30:50; fairseq's own wall meter says 0 after the resume
    assert log.process_seconds == [162.0, 45.0]
    # updates 51-75 of the first process were lost with it (the second resumed from update 50 and did
    # them again): its time counts up to its checkpoint at 10:01:43
    assert log.kept_seconds == [101.0, 45.0] and log.wall_seconds == 146.0
    assert [r["num_updates"] for r in log.train] == [25, 50, 75] and log.epochs[-1]["wall"] == 0
    assert log.train[-1]["loss"] == 8.8  # update 75 as the second process logged it
    unsaved = parse_train_log(RESUMED_LOG.replace("Saved checkpoint", "Saving checkpoint"))
    assert unsaved.kept_seconds == [0.0, 45.0]  # interrupted before its first checkpoint: all redone
    assert parse_train_log(RESUMED_LOG.split("Traceback")[0]).wall_seconds == 162.0  # the last process: whole
