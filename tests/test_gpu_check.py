"""benchmarks/gpu_check.sh --dry-run: the GPU check's every step, on the CPU and small sizes."""

import json
import os
import re
import subprocess

from conftest import REPO
from test_multi30k import write_synthetic_multi30k


def test_gpu_check_dry_run_writes_one_json_of_passed_checks(tmp_path):
    data = write_synthetic_multi30k(tmp_path / "multi30k")
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "MULTI30K_SHA256SUMS": str(data / "SHA256SUMS"), "WORKERS": "1"}
    proc = subprocess.run(["bash", REPO / "benchmarks" / "gpu_check.sh", "--dry-run", "--data", data,
                           "--workdir", tmp_path / "work", "--out", out],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    checks = results["checks"]
    assert results["dry_run"] is True
    assert list(checks) == ["cuda_tests", "compiled_vs_reference", "step_times", "fairseq_fp16", "fsdp"]
    assert all(check["ok"] for check in checks.values()), checks
    assert re.match(r"1/\d+ tests collected", checks["cuda_tests"]["summary"]), checks["cuda_tests"]
    assert "test_fairseq_train_fp16_on_gpu" in (tmp_path / "work" / "cuda_tests.log").read_text()
    for dtype in ("float32", "bfloat16"):
        assert checks["compiled_vs_reference"][dtype]["tensors"] == 7
    rows = checks["step_times"]
    assert rows["fairseq adam"]["x_fairseq_adam"] == 1.0 and rows["torch AdamW fused"]["x_fused_adamw"] == 1.0
    assert rows["adam_sage foreach"]["x_fused_adamw"] > 0
    run = checks["fairseq_fp16"]["fp16"]
    assert run["updates"] == 4 and run["last_loss"] < run["first_loss"] and run["hypotheses"] == 12
    assert checks["fairseq_fp16"]["memory_efficient_fp16"]["skipped"].startswith("--dry-run: in fp32 on the CPU")
    assert checks["fsdp"]["skipped"].startswith("needs 2 GPUs")


def test_gpu_check_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    proc = subprocess.run(["bash", REPO / "benchmarks" / "gpu_check.sh", "--out", tmp_path / "x.json"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "error: no CUDA device here; run on a GPU machine, or pass --dry-run")
