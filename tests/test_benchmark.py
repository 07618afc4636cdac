"""A smoke run of ``python -m benchmarks.sage_speed`` with tiny shapes: the JSON it writes holds
consistent figures (no timing is asserted: they depend on the machine's load)."""

import json
import math
import statistics
import subprocess

import pytest

from benchmarks import step_memory
from benchmarks.parameter_shapes import FLAT, TINY, parameter_shapes
from conftest import REPO
from forked_cli import python_shim
from fairseq_sage.optim.multi_tensor import CHUNK_ELEMENTS


def test_iwslt_shapes_are_fairseqs_architecture():
    """transformer_iwslt_de_en, 8,848/6,632 types, shared decoder embeddings, counted by hand."""
    d, ffn = 512, 1024
    attention = 4 * (d * d + d)
    feed_forward = d * ffn + ffn + ffn * d + d
    encoder_layer = attention + feed_forward + 2 * 2 * d
    decoder_layer = 2 * attention + feed_forward + 3 * 2 * d
    expected = 6 * encoder_layer + 6 * decoder_layer + 8848 * d + 6632 * d
    assert sum(math.prod(s) for s in parameter_shapes("transformer_iwslt_de_en")) == expected == 39_469_056


@pytest.fixture(scope="module")
def smoke_run(toy_data_bin, tmp_path_factory):
    """The benchmark and its fairseq trainings forked (python_shim)."""
    out = tmp_path_factory.mktemp("bench") / "figures.json"
    proc = subprocess.run(
        [str(python_shim()), "-m", "benchmarks.sage_speed", "--archs", "tiny", "--impls", "foreach", "cpp",
         "--warmup", "1", "--repeats", "3", "--no-memory", "--train-model", "tiny", "--train-updates", "6",
         "--train-log-interval", "2", "--train-rounds", "1", "--data-bin", toy_data_bin, "--out", out],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_step_figures_are_consistent(smoke_run):
    stdout, figures = smoke_run
    steps = figures["steps"]["tiny"]
    assert steps["parameters"] == sum(math.prod(s) for s in TINY) and steps["tensors"] == len(TINY)
    rows = steps["optimizers"]
    assert list(rows) == ["fairseq adam", "torch AdamW fused", "adam_sage foreach", "adam_sage cpp",
                          "adam_sage auto +check"]
    adam, fused = rows["fairseq adam"]["median_step_ms"], rows["torch AdamW fused"]["median_step_ms"]
    for name, row in rows.items():
        assert len(row["steps_ms"]) == 3 and all(t > 0 for t in row["steps_ms"])
        assert row["median_step_ms"] == pytest.approx(statistics.median(row["steps_ms"]))
        assert row["x_fairseq_adam"] == pytest.approx(row["median_step_ms"] / adam)
        assert row["x_fused_adamw"] == pytest.approx(row["median_step_ms"] / fused)
        assert row["first_step_s"] > 0
        assert f"{name:24s}{row['median_step_ms']:11.2f}" in stdout
    # m and v in float32 for Adam; Ī adds one float32 buffer; fused AdamW adds a float32 step per tensor
    assert rows["fairseq adam"]["state_bytes_per_parameter"] == 8.0
    assert rows["torch AdamW fused"]["state_bytes_per_parameter"] == pytest.approx(8 + 4 * len(TINY) / steps["parameters"])
    for name in ("adam_sage foreach", "adam_sage cpp", "adam_sage auto +check"):
        assert rows[name]["state_bytes_per_parameter"] == 12.0
    assert figures["machine"]["cpu_count"] >= 1 and figures["machine"]["gpu"] is None


def test_training_figures_are_consistent(smoke_run):
    stdout, figures = smoke_run
    train = figures["train"]
    assert list(train) == ["adam", "adam_sage", "adam_sage +diagnostics"]
    # 6 updates logged every 2: three intervals per run, the first dropped
    (adam,) = train["adam"]["runs_wps"]
    for name, row in train.items():
        (run,) = row["runs_wps"]
        assert len(run) == 2 and all(w > 0 for w in run)
        assert row["wps"] == pytest.approx(statistics.median(run))
        if name != "adam":
            pairs = [w / a for w, a in zip(run, adam)]
            assert row["paired_ratios"] == pytest.approx(pairs)
            assert row["over_adam"] == pytest.approx(statistics.median(pairs))
            assert f"{name:24s}{row['wps']:9.0f}{row['over_adam']:9.3f}" in stdout


@pytest.mark.skipif(not step_memory.available(), reason="peak RSS is read from Linux's /proc")
def test_step_temporaries_do_not_grow_with_the_model():
    """One flat 8.4M-parameter tensor (fairseq's --fp16): the fused kernel allocates nothing, foreach
    at most its four batch temporaries, the reference path whole-tensor ones (which shows that the
    measurement sees temporaries)."""
    temporary = step_memory.measure(["adam_sage cpp", "adam_sage foreach", "adam_sage reference"], "flat")
    buffer_bytes = 4 * math.prod(FLAT[0])
    assert temporary["adam_sage cpp"] < 2**20
    assert temporary["adam_sage foreach"] <= 4 * 4 * CHUNK_ELEMENTS + 2**20 < buffer_bytes
    assert temporary["adam_sage reference"] >= 2 * buffer_bytes
