"""The sensitivity / pruning analysis on a tiny trained transformer: numbers, files, BLEU, errors."""

import csv
import os

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO, USER_DIR, run_fairseq
from forked_cli import run_module
from fairseq_sage.tools.analysis.cli import (
    AnalysisError, cli_main, load_model, parse_prune_by, parse_prune_levels, training_batches,
)
from fairseq_sage.tools.analysis.pruning import SensitivityRanking, largest_selected, prunable, prune_, pruning_scores
from fairseq_sage.tools.analysis.sensitivity import average_sensitivity, parameter_type
from fairseq_sage.tools.analysis.zero_sensitivity import record_activity, zero_sensitivity_causes

MAX_TOKENS = 1000
LEVELS = [0.0, 20.0, 40.0]
NUM_BATCHES, SEED = 3, 1
LAYER_TYPES = [
    "embeddings", "self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out", "enc_dec_attn",
    "ffn_fc1", "ffn_fc2", "layer_norm", "output_projection",
]


@pytest.fixture(scope="module")
def checkpoint(trained_toy):
    """A tiny transformer trained until it translates the toy corpus reasonably (BLEU ~20)."""
    return trained_toy / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def analysis(toy_data_bin, checkpoint, tmp_path_factory):
    """The CLI's output folder and its stdout."""
    output_dir = tmp_path_factory.mktemp("analysis") / "out"
    proc = run_module(
        "fairseq_sage.tools.analysis", toy_data_bin, "--path", checkpoint,
        "--user-dir", USER_DIR, "--num-batches", str(NUM_BATCHES), "--max-tokens", str(MAX_TOKENS),
        "--prune-levels", ",".join(f"{p:g}" for p in LEVELS), "--prune-by", "sensitivity,magnitude",
        "--output-dir", output_dir, "--seed", str(SEED), "--beam", "5", "--gen-subset", "valid", "--cpu", cwd=REPO)
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
        "zero_sensitivity.csv",
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


def test_pruning_table_has_a_row_per_criterion_and_level(analysis, loaded):
    rows = read_csv(analysis[0] / "pruning_bleu.csv")
    assert list(rows[0]) == ["criterion", "prune_percent", "pruned_weights", "prunable_weights",
                             "sensitivity_threshold", "magnitude_threshold", "bleu"]
    assert [(r["criterion"], float(r["prune_percent"])) for r in rows] == [
        (criterion, level) for criterion in ("sensitivity", "magnitude") for level in LEVELS]
    by_sensitivity, by_magnitude = rows[:len(LEVELS)], rows[len(LEVELS):]
    for ours, theirs in zip(by_sensitivity, by_magnitude):
        assert ours["pruned_weights"] == theirs["pruned_weights"]
        assert ours["prunable_weights"] == theirs["prunable_weights"]
        # each ranking prunes the smallest scores of its own kind first
        assert float(ours["sensitivity_threshold"]) <= float(theirs["sensitivity_threshold"])
        assert float(theirs["magnitude_threshold"]) <= float(ours["magnitude_threshold"])
    assert by_sensitivity[0]["bleu"] == by_magnitude[0]["bleu"]  # nothing pruned: the same model
    magnitudes = np.sort(np.concatenate([p.detach().abs().flatten().numpy() for n, p in loaded[0].named_parameters()
                                         if parameter_type(n) != "embeddings"]))
    for row in by_magnitude[1:]:  # the largest |θ| pruned is the k-th smallest of the original weights
        assert float(row["magnitude_threshold"]) == pytest.approx(magnitudes[int(row["pruned_weights"]) - 1], rel=1e-6)
    assert [float(r["magnitude_threshold"]) for r in by_magnitude][0] == 0.0
    assert "pruned 40% by magnitude (" in analysis[1]


def test_pruning_table_counts_and_bleu_at_zero_match_fairseq_generate(
    analysis, loaded, toy_data_bin, checkpoint
):
    rows = [r for r in read_csv(analysis[0] / "pruning_bleu.csv") if r["criterion"] == "sensitivity"]
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
    assert (f"pruned 0% by sensitivity (0 of {non_embedding} non-embedding weights): BLEU {expected:.2f}"
            in analysis[1])


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


def test_magnitude_pruning_zeroes_the_smallest_non_embedding_weights(loaded):
    model, task, criterion = loaded
    params = dict(model.named_parameters())
    sensitivity = {name: torch.rand_like(p) for name, p in params.items()}  # must not matter
    masks = SensitivityRanking(pruning_scores("magnitude", sensitivity, params)).least_sensitive(65)

    names = [n for n in params if parameter_type(n) != "embeddings"]
    magnitudes = np.concatenate([params[n].detach().abs().flatten().numpy() for n in names])
    chosen = np.argsort(magnitudes, kind="stable")[: round(0.65 * magnitudes.size)]
    expected = np.zeros(magnitudes.size, dtype=bool)
    expected[chosen] = True
    assert list(masks) == names
    assert np.array_equal(np.concatenate([masks[n].flatten().numpy() for n in names]), expected)


def test_log10_spread_per_type_matches_numpy(analysis, toy_data_bin, checkpoint):
    model, task, criterion = load_model(toy_data_bin, checkpoint, None)  # fresh: the CLI's first epoch's batches
    task.load_dataset("train")
    batches = training_batches(task, model, NUM_BATCHES, MAX_TOKENS, SEED)
    sensitivity = average_sensitivity(model, criterion, batches)
    rows = {r["type"]: r for r in read_csv(analysis[0] / "sensitivity_by_type.csv")}
    for kind in LAYER_TYPES:
        values = np.concatenate([v.double().flatten().numpy() for n, v in sensitivity.items()
                                 if parameter_type(n) == kind])
        logs = np.log10(values[values > 0])
        q25, q75 = np.percentile(logs, [25, 75])
        assert float(rows[kind]["log10_var"]) == pytest.approx(np.mean((logs - logs.mean()) ** 2), rel=1e-5)
        assert float(rows[kind]["log10_iqr"]) == pytest.approx(q75 - q25, rel=1e-5)
        assert float(rows[kind]["zero_fraction"]) == pytest.approx(np.mean(values == 0), abs=1e-12)


def test_zero_sensitivity_table_adds_up_to_the_zero_fractions(analysis):
    zeros = read_csv(analysis[0] / "zero_sensitivity.csv")
    summary = {r["type"]: r for r in read_csv(analysis[0] / "sensitivity_by_type.csv")}
    assert list(zeros[0]) == ["type", "cause", "weights", "fraction_of_type"]
    expected_causes = {"ffn_fc1": ["dead_relu_unit", "other"], "ffn_fc2": ["dead_relu_unit", "other"],
                       "embeddings": ["unused_embedding_row", "other"]}
    assert [(r["type"], r["cause"]) for r in zeros] == [
        (kind, cause) for kind in LAYER_TYPES for cause in expected_causes.get(kind, ["other"])]
    for kind in LAYER_TYPES:
        own = [r for r in zeros if r["type"] == kind]
        count = int(summary[kind]["count"])
        assert all(float(r["fraction_of_type"]) == pytest.approx(int(r["weights"]) / count) for r in own)
        assert sum(int(r["weights"]) for r in own) == round(float(summary[kind]["zero_fraction"]) * count)
    unused = next(r for r in zeros if r["cause"] == "unused_embedding_row")
    assert int(unused["weights"]) > 0  # the toy vocabulary is not all in 3 batches' sources


class TinyFeedForward(nn.Module):
    """Embedding, one ReLU feed-forward block, output projection: fairseq's parameter names."""

    def __init__(self, vocab=10, dim=4, hidden=6):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([nn.Module()])
        block = self.layers[0]
        block.fc1, block.fc2, block.activation_fn = nn.Linear(dim, hidden), nn.Linear(hidden, dim), F.relu
        self.output_projection = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed_tokens(tokens)
        block = self.layers[0]
        return self.output_projection(x + block.fc2(block.activation_fn(block.fc1(x))))


def tiny_criterion(model, batch):
    logits = model(batch["net_input"]["src_tokens"])
    loss = F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), reduction="sum")
    return loss, batch["target"].numel(), {}


def test_dead_relu_units_and_unused_rows_are_attributed():
    torch.manual_seed(0)
    model = TinyFeedForward()
    fc1, fc2 = model.layers[0].fc1, model.layers[0].fc2
    with torch.no_grad():
        fc1.weight[2] = -1.0  # unit 2 cannot fire: the ReLU's input is < -50 for any embedding
        fc1.bias[2] = -50.0
    tokens = torch.tensor([[0, 1, 2, 3], [4, 5, 1, 0]])  # ids 6..9 never occur
    batch = {"net_input": {"src_tokens": tokens}, "target": tokens.flip(1)}
    with record_activity(model) as activity:
        sensitivity = average_sensitivity(model, tiny_criterion, [batch, batch])
    assert activity.unit_firings["layers.0"][2] == 0 and activity.unit_firings["layers.0"].sum() > 0
    rows = {(r["type"], r["cause"]): r["weights"] for r in zero_sensitivity_causes(sensitivity, activity)}

    zeros = {name: int((values == 0).sum()) for name, values in sensitivity.items()}
    dead_fc1 = 4 + 1  # the unit's row of fc1's weight, and its bias
    assert torch.all(sensitivity["layers.0.fc1.weight"][2] == 0) and sensitivity["layers.0.fc1.bias"][2] == 0
    assert torch.all(sensitivity["layers.0.fc2.weight"][:, 2] == 0)
    assert torch.all(sensitivity["embed_tokens.weight"][6:] == 0)
    assert rows[("ffn_fc1", "dead_relu_unit")] == dead_fc1
    assert rows[("ffn_fc1", "other")] == zeros["layers.0.fc1.weight"] + zeros["layers.0.fc1.bias"] - dead_fc1
    assert rows[("ffn_fc2", "dead_relu_unit")] == 4
    assert rows[("ffn_fc2", "other")] == zeros["layers.0.fc2.weight"] + zeros["layers.0.fc2.bias"] - 4
    assert rows[("embeddings", "unused_embedding_row")] == 4 * 4
    assert rows[("embeddings", "other")] == zeros["embed_tokens.weight"] - 16
    assert rows[("output_projection", "other")] == zeros["output_projection.weight"]
    assert not fc1._forward_hooks and not model.embed_tokens._forward_hooks  # hooks removed


def test_ranking_breaks_ties_by_position():
    scores = {"a": torch.tensor([0.0, 1.0, 1.0]), "b": torch.tensor([[1.0, 0.0], [2.0, 3.0]])}
    ranking = SensitivityRanking(scores)
    masks = ranking.least_sensitive(50)  # round(3.5) = 4 of 7 elements: both zeros, then a's ones
    assert masks["a"].tolist() == [True, True, True]
    assert masks["b"].tolist() == [[False, True], [False, False]]
    assert largest_selected(scores, masks) == 1.0 and largest_selected(scores, ranking.least_sensitive(0)) == 0.0
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


def test_parse_prune_by():
    assert parse_prune_by("sensitivity,magnitude") == ["sensitivity", "magnitude"]
    assert parse_prune_by("magnitude") == ["magnitude"]
    for bad in ("", "size", "magnitude,magnitude", "sensitivity,"):
        with pytest.raises(AnalysisError, match="--prune-by"):
            parse_prune_by(bad)


def test_parse_prune_levels():
    assert parse_prune_levels("0,20,40,50,60,65,70,75,80,90") == [0, 20, 40, 50, 60, 65, 70, 75, 80, 90]
    assert parse_prune_levels("0,5,12.5") == [0.0, 5.0, 12.5]
    for bad in ("", "5,x", "-1", "100", "5,5"):
        with pytest.raises(AnalysisError, match="--prune-levels"):
            parse_prune_levels(bad)


@pytest.mark.parametrize("case, message", [
    ("no_checkpoint", "--path {missing}/checkpoint.pt: no such checkpoint file"),
    ("no_data", "DATA_BIN {missing}: no such directory"),
    ("bad_levels", "--prune-levels '10,x'"),
    ("bad_criterion", "--prune-by 'size': expected a comma-separated list of distinct criteria"),
    ("no_subset", "--gen-subset test7: DATA_BIN {data} has no 'test7' split"),
    ("zero_batches", "--num-batches must be >= 1, got 0"),
])
def test_bad_input_stops_with_one_line(case, message, toy_data_bin, checkpoint, tmp_path):
    missing = tmp_path / "missing"
    argv = {
        "no_checkpoint": [toy_data_bin, "--path", missing / "checkpoint.pt"],
        "no_data": [missing, "--path", checkpoint],
        "bad_levels": [toy_data_bin, "--path", checkpoint, "--prune-levels", "10,x"],
        "bad_criterion": [toy_data_bin, "--path", checkpoint, "--prune-by", "size"],
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
    proc = run_module("fairseq_sage.tools.analysis", data, "--path", model, "--output-dir", output,
                      "--num-batches", "1", "--prune-levels", "0", "--cpu", cwd=REPO)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"fairseq-sage-analyze: error: {expected}"] == proc.stderr.splitlines()[-1:], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists() and not any(empty.iterdir())
    assert blocker.read_text() == "kept\n" and sorted(unwritable_folder.iterdir()) == before
