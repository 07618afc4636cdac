"""benchmarks/gpu_check.sh --dry-run: the GPU check's every step, on the CPU, small sizes and a subset
of the real Multi30k; and each check refusing what it exists to catch."""

import argparse
import json
import os
import re
import subprocess

import pytest
import torch

import fairseq_sage
from benchmarks import gpu_check
from benchmarks.parameter_shapes import TINY
from conftest import REAL_SUBSET_LINES, REPO
from forked_cli import python_shim
from helpers import train_log_of_text

STEP_ROWS = ["fairseq adam", "torch AdamW fused", "adam_sage foreach", "adam_sage auto +check"]


def cuda_marked_tests() -> int:
    """The tests the suite marks ``cuda``, counted in its source."""
    return sum(line.strip() == "@pytest.mark.cuda"
               for path in (REPO / "tests").glob("test_*.py") for line in path.read_text().splitlines())


def test_gpu_check_dry_run_writes_one_json_of_passed_checks(real_subset, tmp_path):
    out, work = tmp_path / "gpu_check.json", tmp_path / "work"
    env = {**os.environ, "MULTI30K_SHA256SUMS": str(real_subset / "SHA256SUMS"), "WORKERS": "1",
           "PYTHON": str(python_shim())}  # its Python commands forked
    proc = subprocess.run(["bash", REPO / "benchmarks" / "gpu_check.sh", "--dry-run", "--data", real_subset,
                           "--workdir", work, "--out", out],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    checks = results["checks"]
    assert results["dry_run"] is True
    assert list(checks) == ["cuda_tests", "compiled_vs_reference", "step_times", "fairseq_fp16", "fsdp"]
    assert all(check["ok"] for check in checks.values()), checks

    # the CUDA tests collected are the ones the suite marks
    collected = re.match(r"(\d+)/\d+ tests collected", checks["cuda_tests"]["summary"])
    assert collected and int(collected.group(1)) == cuda_marked_tests() > 0, checks["cuda_tests"]
    assert "test_fairseq_train_fp16_on_gpu" in (work / "cuda_tests.log").read_text()

    # foreach agreed with the reference on every tiny tensor, to the check's own tolerance
    for dtype in ("float32", "bfloat16"):
        row = checks["compiled_vs_reference"][dtype]
        assert row["impl"] == "foreach" and row["tensors"] == len(TINY)
        bound = gpu_check.tolerance(getattr(torch, dtype))
        assert row["max_abs_weight_difference"] <= bound["atol"] + bound["rtol"] * 1.0  # |weights| < 1

    # each optimizer's ratios are its median over fairseq adam's and fused AdamW's medians
    rows = {name: row for name, row in checks["step_times"].items() if name not in ("ok", "seconds")}
    assert list(rows) == STEP_ROWS
    adam, fused = rows["fairseq adam"]["median_step_ms"], rows["torch AdamW fused"]["median_step_ms"]
    for row in rows.values():
        assert row["median_step_ms"] > 0 and row["first_step_s"] > 0
        assert row["x_fairseq_adam"] == pytest.approx(row["median_step_ms"] / adam)
        assert row["x_fused_adamw"] == pytest.approx(row["median_step_ms"] / fused)

    # the figures of the training are those of its log; one hypothesis per test2016 line
    run = checks["fairseq_fp16"]["fp16"]
    logged = train_log_of_text((work / "fp16.train.log").read_text())
    assert [u for u, _, _ in logged] == [1, 2, 3, 4] and run["updates"] == 4
    assert (run["first_loss"], run["last_loss"]) == (logged[0][1], logged[-1][1])
    assert run["last_loss"] < run["first_loss"]
    generated = (work / "fp16.generate.log").read_text()
    hypotheses = sum(line.startswith("H-") for line in generated.splitlines())
    assert run["hypotheses"] == hypotheses == REAL_SUBSET_LINES["test_2016_flickr"]
    assert (work / "fp16" / "checkpoint_last.pt").is_file()
    assert checks["fairseq_fp16"]["memory_efficient_fp16"]["skipped"].startswith("--dry-run: in fp32 on the CPU")
    assert checks["fsdp"]["skipped"].startswith("needs 2 GPUs")


def test_gpu_check_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    proc = subprocess.run(["bash", REPO / "benchmarks" / "gpu_check.sh", "--out", tmp_path / "x.json"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "error: no CUDA device here; run on a GPU machine, or pass --dry-run")


def dry_args(tmp_path) -> argparse.Namespace:
    return argparse.Namespace(dry_run=True, device="cpu", workdir=tmp_path, data=None)


def test_compiled_vs_reference_fails_when_the_fast_path_moves_the_weights(tmp_path, monkeypatch):
    """A fast path that moves every weight by 1e-4 more than the reference is caught."""

    class OffByAStep(fairseq_sage.AdamSAGE):
        def __init__(self, params, impl, **settings):
            super().__init__(params, impl=impl, **settings)
            self.drifts = impl != "reference"

        @torch.no_grad()
        def step(self, closure=None):
            loss = super().step(closure)
            if self.drifts:
                for group in self.param_groups:
                    for p in group["params"]:
                        p.add_(1e-4)
            return loss

    monkeypatch.setattr(fairseq_sage, "AdamSAGE", OffByAStep)
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        gpu_check.compiled_vs_reference(dry_args(tmp_path))


def inner_line(update: int, loss: float) -> str:
    """A train_inner line as fairseq-train --log-format simple writes it."""
    return (f"2026-12-06 04:00:0{update} | INFO | train_inner | epoch 001:      {update} / 9 loss={loss}, "
            f"nll_loss={loss - 0.1:.3f}, ppl=100, wps=900, ups=2.1, wpb=400, bsz=30, num_updates={update}, "
            "lr=0.00125, gnorm=3.1, train_wall=0, gb_free=None, wall=2")


@pytest.mark.parametrize("losses, overflows, hypotheses, message", [
    ([9.0, 9.1, 9.2, 9.3], 0, 2, "fp16: the loss did not fall (9.0 -> 9.3)"),
    ([9.0, 8.5, 8.0], 0, 2, "fp16: the run did not reach 4 updates"),
    ([9.0, 8.5, 8.0, 7.5], 11, 2, "fp16: 11 gradient overflows in 4 updates"),
    ([9.0, 8.5, 8.0, 7.5], 0, 0, "fp16: fairseq-generate wrote no hypothesis"),
])  # fmt: skip
def test_training_check_fails_on_a_bad_run(tmp_path, monkeypatch, losses, overflows, hypotheses, message):
    train = "\n".join([inner_line(u, loss) for u, loss in enumerate(losses, start=1)]
                      + ["| WARNING | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient"] * overflows)
    generate = "".join(f"S-{i}\tein hund\nH-{i}\t-0.4\ta dog\n" for i in range(hypotheses))

    def fake_run(command, log, env=None):
        return train if "fairseq_cli.train" in map(str, command) else generate

    monkeypatch.setattr(gpu_check, "run", fake_run)
    with pytest.raises(gpu_check.CheckFailed, match=re.escape(message)):
        gpu_check.train_and_generate(dry_args(tmp_path), tmp_path / "data-bin", "fp16", ["--fp16"])
    # the same run with a falling loss, no overflow and hypotheses passes, and reports what it read
    good_train = "\n".join(inner_line(u, loss) for u, loss in enumerate([9.0, 8.5, 8.0, 7.5], start=1))
    monkeypatch.setattr(gpu_check, "run", lambda command, log, env=None: good_train if "fairseq_cli.train" in map(
        str, command) else "H-0\t-0.4\ta dog\nH-1\t-0.2\ta man\n")
    assert gpu_check.train_and_generate(dry_args(tmp_path), tmp_path / "data-bin", "fp16", ["--fp16"]) == {
        "updates": 4, "first_loss": 9.0, "last_loss": 7.5, "overflows": 0, "hypotheses": 2, "flags": []}
