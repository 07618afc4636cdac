"""The sensitivity / pruning analysis on a tiny trained transformer: numbers, files, BLEU, errors."""

import csv
import os
import subprocess
import sys

import pytest
import sacrebleu
import torch

from conftest import REPO, USER_DIR, run_fairseq, train_args
from fairseq_sage.tools.analysis.cli import (
    AnalysisError, cli_main, load_model, parse_prune_levels, training_batches,
)
from fairseq_sage.tools.analysis.pruning import SensitivityRanking, prunable, prune_
from fairseq_sage.tools.analysis.sensitivity import average_sensitivity, parameter_type

MAX_TOKENS = 1000
LEVELS = [0.0, 20.0, 40.0]
LAYER_TYPES = [
    "embeddings", "self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out", "enc_dec_attn",
    "ffn_fc1", "ffn_fc2", "layer_norm", "output_projection",
]


@pytest.fixture(scope="module")
def checkpoint(toy_data_bin, tmp_path_factory):
    """A tiny transformer trained until it translates the toy corpus reasonably (BLEU ~20)."""
    save_dir = tmp_path_factory.mktemp("analysis_model")
    run_fairseq("train", *train_args(
        toy_data_bin, save_dir, "--max-update", "100", "--max-tokens", str(MAX_TOKENS), "--lr", "2e-2",
        "--dropout", "0", "--disable-validation", "--save-interval", "1000", "--no-epoch-checkpoints",
        "--log-interval", "50",
    ))
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def analysis(toy_data_bin, checkpoint, tmp_path_factory):
    """The CLI's output folder and its stdout."""
    output_dir = tmp_path_factory.mktemp("analysis") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_sage.tools.analysis", toy_data_bin, "--path", checkpoint,
         "--user-dir", USER_DIR, "--num-batches", "3", "--max-tokens", str(MAX_TOKENS),
         "--prune-levels", ",".join(f"{p:g}" for p in LEVELS), "--output-dir", output_dir,
         "--beam", "5", "--gen-subset", "valid", "--cpu"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output_dir, proc.stdout


@pytest.fixture(scope="module")
def loaded(toy_data_bin, checkpoint):
    model, task, criterion = load_model(toy_data_bin, checkpoint, None)
    task.load_dataset("train")
    return model, task, criterion


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_writes_both_tables_and_figures_and_nothing_else(analysis):
    output_dir, _ = analysis
    names = sorted(p.name for p in output_dir.iterdir())
    assert names == [
        "pruning_bleu.csv", "pruning_bleu.png", "sensitivity_by_type.csv", "sensitivity_by_type.png",
    ]
    for name in ("pruning_bleu.png", "sensitivity_by_type.png"):
        data = (output_dir / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    umask = os.umask(0)
    os.umask(umask)
    assert all((output_dir / n).stat().st_mode & 0o777 == 0o666 & ~umask for n in names)


def test_sensitivity_table_covers_every_weight_by_type(analysis, loaded):
    rows = read_csv(analysis[0] / "sensitivity_by_type.csv")
    assert [r["type"] for r in rows] == LAYER_TYPES
    expected = {}
    for name, param in loaded[0].named_parameters():
        expected[parameter_type(name)] = expected.get(parameter_type(name), 0) + param.numel()
    assert {r["type"]: int(r["count"]) for r in rows} == expected
    for row in rows:
        values = [float(row[k]) for k in ("min", "p01", "p10", "p25", "p50", "p75", "p90", "p99", "max")]
        assert values == sorted(values) and values[0] >= 0
        assert float(row["min"]) <= float(row["mean"]) <= float(row["max"])
        assert 0 <= float(row["zero_fraction"]) <= 1
    assert float(rows[1]["p50"]) > 0  # attention weights of a trained model carry signal


def test_pruning_table_counts_and_bleu_at_zero_match_fairseq_generate(
    analysis, loaded, toy_data_bin, checkpoint
):
    rows = read_csv(analysis[0] / "pruning_bleu.csv")
    assert [float(r["prune_percent"]) for r in rows] == LEVELS
    non_embedding = sum(
        p.numel() for n, p in loaded[0].named_parameters() if parameter_type(n) != "embeddings"
    )
    for row, percent in zip(rows, LEVELS):
        assert int(row["prunable_weights"]) == non_embedding
        assert int(row["pruned_weights"]) == round(percent / 100 * non_embedding)
        assert 0 <= float(row["bleu"]) <= 100
    thresholds = [float(r["sensitivity_threshold"]) for r in rows]
    assert thresholds[0] == 0 < thresholds[1] < thresholds[2]

    generated = run_fairseq(
        "generate", toy_data_bin, "--user-dir", USER_DIR, "--path", checkpoint, "--beam", "5",
        "--gen-subset", "valid", "--max-tokens", MAX_TOKENS, "--cpu",
    ).stdout
    lines = [line.split("\t") for line in generated.splitlines()]
    hypotheses = dict((cols[0][2:], cols[2]) for cols in lines if cols[0].startswith("H-"))
    references = dict((cols[0][2:], cols[1]) for cols in lines if cols[0].startswith("T-"))
    order = sorted(hypotheses, key=int)
    assert len(order) == 40
    expected = sacrebleu.corpus_bleu([hypotheses[i] for i in order], [[references[i] for i in order]]).score
    assert float(rows[0]["bleu"]) == pytest.approx(expected, abs=1e-9)
    assert expected > 5, "the test model learned too little for a meaningful comparison"
    assert f"pruned 0% (0 of {non_embedding} non-embedding weights): BLEU {expected:.2f}" in analysis[1]


def test_sensitivity_is_the_mean_of_theta_times_gradient_over_batches(loaded):
    model, task, criterion = loaded
    batches = training_batches(task, model, count=2, max_tokens=400, seed=3)
    assert len(batches) == 2
    sensitivity = average_sensitivity(model, criterion, batches)

    model.eval()  # the documented choice: no dropout
    names, params = zip(*[(n, p) for n, p in model.named_parameters()])
    by_hand = [torch.zeros_like(p) for p in params]
    for batch in batches:
        loss, sample_size, _ = criterion(model, batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for total, p, g in zip(by_hand, params, grads):
            if g is not None:
                total += (p.detach() * g / sample_size).abs() / 2
    assert list(sensitivity) == list(names)
    for name, expected in zip(names, by_hand):
        assert torch.allclose(sensitivity[name], expected, rtol=1e-4, atol=1e-8), name
    assert all(p.grad is None for p in params)
    assert sum(bool(v.abs().sum() > 0) for v in sensitivity.values()) > len(names) // 2


def test_pruning_zeroes_the_least_sensitive_non_embedding_weights(loaded):
    model, task, criterion = loaded
    sensitivity = average_sensitivity(model, criterion, training_batches(task, model, 2, 400, seed=1))
    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    ranking = SensitivityRanking(prunable(sensitivity))
    assert set(ranking.shapes) == {n for n in params if parameter_type(n) != "embeddings"}
    assert {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}.isdisjoint(ranking.shapes)
    masks = ranking.least_sensitive(30)
    try:
        pruned = prune_(params, masks)
        expected_count = round(0.3 * sum(before[n].numel() for n in ranking.shapes))
        assert pruned == expected_count == sum(int(m.sum()) for m in masks.values())
        for name, p in params.items():
            if name in masks:
                assert torch.all(p[masks[name]] == 0)
                assert torch.equal(p[~masks[name]], before[name][~masks[name]])
            else:
                assert parameter_type(name) == "embeddings" and torch.equal(p, before[name])
        chosen = torch.cat([sensitivity[n][m] for n, m in masks.items()])
        kept = torch.cat([sensitivity[n][~m] for n, m in masks.items()])
        assert chosen.max() <= kept.min()
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(before[name])


def test_ranking_breaks_ties_by_position():
    ranking = SensitivityRanking(
        {"a": torch.tensor([0.0, 1.0, 1.0]), "b": torch.tensor([[1.0, 0.0], [2.0, 3.0]])}
    )
    masks = ranking.least_sensitive(50)  # round(3.5) = 4 of 7 elements: both zeros, then a's ones
    assert masks["a"].tolist() == [True, True, True]
    assert masks["b"].tolist() == [[False, True], [False, False]]
    assert ranking.threshold(50) == 1.0 and ranking.threshold(0) == 0.0
    assert not any(m.any() for m in ranking.least_sensitive(0).values())


@pytest.mark.parametrize("name, kind", [
    ("encoder.embed_tokens.weight", "embeddings"),
    ("decoder.embed_positions.weight", "embeddings"),
    ("encoder.layers.0.self_attn.q_proj.weight", "self_attn_q"),
    ("decoder.layers.5.self_attn.k_proj.bias", "self_attn_k"),
    ("decoder.layers.0.self_attn.v_proj.weight", "self_attn_v"),
    ("encoder.layers.3.self_attn.out_proj.weight", "self_attn_out"),
    ("decoder.layers.0.encoder_attn.k_proj.weight", "enc_dec_attn"),
    ("decoder.layers.0.encoder_attn_layer_norm.weight", "layer_norm"),
    ("encoder.layers.0.self_attn_layer_norm.bias", "layer_norm"),
    ("encoder.layernorm_embedding.weight", "layer_norm"),
    ("decoder.layer_norm.weight", "layer_norm"),
    ("encoder.layers.1.fc1.weight", "ffn_fc1"),
    ("decoder.layers.1.fc2.bias", "ffn_fc2"),
    ("decoder.output_projection.weight", "output_projection"),
    ("decoder.project_in_dim.weight", "other"),
])
def test_parameter_types(name, kind):
    assert parameter_type(name) == kind


def test_parse_prune_levels():
    assert parse_prune_levels("0,5,12.5") == [0.0, 5.0, 12.5]
    for bad in ("", "5,x", "-1", "100", "5,5"):
        with pytest.raises(AnalysisError, match="--prune-levels"):
            parse_prune_levels(bad)


@pytest.mark.parametrize("case, message", [
    ("no_checkpoint", "--path {missing}/checkpoint.pt: no such checkpoint file"),
    ("no_data", "DATA_BIN {missing}: no such directory"),
    ("bad_levels", "--prune-levels '10,x'"),
    ("no_subset", "--gen-subset test7: DATA_BIN {data} has no 'test7' split"),
    ("zero_batches", "--num-batches must be >= 1, got 0"),
])
def test_bad_input_stops_with_one_line(case, message, toy_data_bin, checkpoint, tmp_path):
    missing = tmp_path / "missing"
    argv = {
        "no_checkpoint": [toy_data_bin, "--path", missing / "checkpoint.pt"],
        "no_data": [missing, "--path", checkpoint],
        "bad_levels": [toy_data_bin, "--path", checkpoint, "--prune-levels", "10,x"],
        "no_subset": [toy_data_bin, "--path", checkpoint, "--gen-subset", "test7"],
        "zero_batches": [toy_data_bin, "--path", checkpoint, "--num-batches", "0"],
    }[case]
    with pytest.raises(SystemExit) as stop:
        cli_main([str(a) for a in argv] + ["--output-dir", str(tmp_path / "out"), "--cpu"])
    text = str(stop.value.code)
    assert text.startswith("fairseq-sage-analyze: error: ") and "\n" not in text
    assert message.format(missing=missing, data=toy_data_bin) in text
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def language_model(toy_data_bin, tmp_path_factory):
    """A language-model data-bin (fairseq-preprocess --only-source of the toy sources) and a
    transformer_lm trained on it for two updates: (data-bin, checkpoint)."""
    folder = tmp_path_factory.mktemp("lm")
    raw = toy_data_bin.parent
    run_fairseq("preprocess", "--only-source", "--trainpref", raw / "train.src", "--validpref", raw / "valid.src",
                "--destdir", folder / "data-bin", "--workers", "1")
    run_fairseq("train", folder / "data-bin", "--task", "language_modeling", "--arch", "transformer_lm",
                "--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "16",
                "--decoder-attention-heads", "2", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "256",
                "--tokens-per-sample", "32", "--max-update", "2", "--cpu", "--save-dir", folder / "checkpoints",
                "--no-epoch-checkpoints", "--disable-validation", "--num-workers", "0")
    return folder / "data-bin", folder / "checkpoints" / "checkpoint_last.pt"


@pytest.mark.parametrize("case", ["empty_data", "lm_data", "lm_checkpoint", "unwritable_output", "output_under_a_file"])
def test_the_cli_stops_on_what_it_cannot_analyse_with_one_line(
        case, toy_data_bin, checkpoint, language_model, tmp_path, unwritable_folder):
    lm_data, lm_checkpoint = language_model
    empty, blocker = tmp_path / "empty", tmp_path / "notes.txt"
    empty.mkdir()
    blocker.write_text("kept\n")
    output = {"unwritable_output": unwritable_folder / "out", "output_under_a_file": blocker / "out"}.get(
        case, tmp_path / "out")
    data, model = {"empty_data": (empty, checkpoint), "lm_data": (lm_data, checkpoint),
                   "lm_checkpoint": (toy_data_bin, lm_checkpoint)}.get(case, (toy_data_bin, checkpoint))
    translation_data = "give the fairseq-preprocess output of the translation corpus the model was trained on, " \
                       "with its train and --gen-subset splits"
    expected = {
        "empty_data": f"DATA_BIN {empty}: no dictionaries of a translation corpus (dict.SRC.txt and dict.TGT.txt); "
                      + translation_data,
        "lm_data": f"DATA_BIN {lm_data}: no dictionaries of a translation corpus (dict.SRC.txt and dict.TGT.txt); "
                   + translation_data,
        "lm_checkpoint": f"--path {lm_checkpoint}: a model of fairseq's language_modeling task; the analysis "
                         "needs a translation model (fairseq-train --task translation)",
        "unwritable_output": f"--output-dir {output}: cannot create files in {unwritable_folder} (Permission denied); "
                             "give a folder you can write to",
        "output_under_a_file": f"--output-dir {output}: {blocker} is a file, not a folder; give a folder you can write to",
    }[case]
    before = sorted(unwritable_folder.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_sage.tools.analysis", data, "--path", model, "--output-dir", output,
         "--num-batches", "1", "--prune-levels", "0", "--cpu"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"fairseq-sage-analyze: error: {expected}"] == proc.stderr.splitlines()[-1:], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists() and not any(empty.iterdir())
    assert blocker.read_text() == "kept\n" and sorted(unwritable_folder.iterdir()) == before
