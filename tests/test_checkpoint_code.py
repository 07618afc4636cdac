"""Checkpoints whose configuration holds code: refused everywhere we load checkpoints, the payload never runs.

fairseq ``eval()``s some configuration strings while it builds a model (``utils.eval_str_list`` on
``adaptive_softmax_cutoff`` in every transformer decoder, among about thirty call sites), so a
checkpoint with a string of code there, and nothing but primitive types in its pickle, runs that
code in ``fairseq-generate``. Every string of ``cfg`` and of the legacy ``args`` is examined; the
strings of real checkpoints of every architecture and optimizer the recipes and tests train, in
both forms, must all pass.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_TRANSFORMER, USER_DIR, train_args
from fairseq_sage.checkpoints import CheckpointError, load_checkpoint
from fairseq_sage.config_code import find_code, is_code

fairseq_options = pytest.importorskip("fairseq.options")
import fairseq_sage.fairseq  # noqa: E402,F401  (registers the SAGE optimizers with fairseq's parser)

TINY_SIZES = TINY_TRANSFORMER[TINY_TRANSFORMER.index("--arch") + 2:]
LABEL_SMOOTHING = ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
GENUINE = {
    # the recipes' architectures and flags (tiny sizes), and the optimizers the tests train
    "iwslt14 adam_sage": ["--arch", "transformer_iwslt_de_en", *TINY_SIZES, "--share-decoder-input-output-embed",
                          "--clip-norm", "0.0", "--dropout", "0.3", "--weight-decay", "0.0001", *LABEL_SMOOTHING,
                          "--update-epoch-batch-itr", "True"],
    "wmt16 adamax_sage": ["--arch", "transformer_wmt_en_de", *TINY_SIZES, "--share-all-embeddings",
                          "--optimizer", "adamax_sage", "--adamax-betas", "(0.9, 0.98)", *LABEL_SMOOTHING],
    "multi30k sgd_sage --eval-bleu": ["--share-all-embeddings", "--optimizer", "sgd_sage", "--momentum", "0.9",
                                      "--sage-params", r"decoder\.layers", "--eval-bleu",
                                      "--eval-bleu-args", '{"beam": 1}', "--eval-bleu-remove-bpe", "@@ "],
    "multi30k adam": ["--share-all-embeddings", "--optimizer", "adam", "--weight-decay", "0.0001", *LABEL_SMOOTHING],
}
PAYLOAD_FIELD = "adaptive_softmax_cutoff"  # utils.eval_str_list()'d by fairseq's transformer decoder


def genuine_argv(data_bin: Path, save_dir: Path, name: str) -> list:
    """fairseq-train's command line for the GENUINE run ``name`` (later flags override conftest's)."""
    argv = [str(a) for a in train_args(data_bin, save_dir, "--max-update", "1", "--no-epoch-checkpoints")]
    if "--optimizer" in GENUINE[name]:  # drop conftest's adam_sage flags
        del argv[argv.index("--optimizer"):argv.index("--sage-beta0") + 2]
    return argv + GENUINE[name]


def fairseq(tool, *args, env=None, plugin=True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)]
    return run(command + (["--user-dir", str(USER_DIR)] if plugin else []), env)


def run(command, env=None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    return subprocess.run([str(c) for c in command], cwd=REPO, env=dict(environment, **(env or {})),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def genuine(toy_data_bin, tmp_path_factory):
    """name -> (checkpoint_last.pt of one update of that run, its fairseq-train command line)."""
    runs = {}
    for name in GENUINE:
        save_dir = tmp_path_factory.mktemp(name.replace(" ", "_").replace("-", ""))
        argv = genuine_argv(toy_data_bin, save_dir, name)
        proc = fairseq("train", *argv, plugin=False)  # argv holds --user-dir already
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = (save_dir / "checkpoint_last.pt", argv)
    return runs


def legacy_form(state: dict, argv: list) -> dict:
    """``state`` as fairseq <= 0.9 saved it: the training arguments as ``args``, no ``cfg``."""
    args = fairseq_options.parse_args_and_arch(fairseq_options.get_training_parser(), argv)
    return dict(state, args=args, cfg=None)


def strings_of(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, argparse.Namespace):
        yield from strings_of(vars(value))
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_of(item)


# --- which strings are code ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "(0.9, 0.98)", "[20]", "1e-07", "{}", '{"beam": 4}', "True", "None", "-1", "0.25,0.5",
    "transformer", "label_smoothed_cross_entropy", "adam_sage", "checkpoint_last.pt",
    "data-bin/iwslt14.tokenized.de-en", "/tmp/data-bin", "../shared/data/multi30k", "runs/multi30k/adam-sage",
    "@@ ", "", "sentencepiece", "de,en", "%Y-%m-%d", "not x", "a if b else c", "relu", "x\x00y",
    "exec", "print",  # a bare name is looked up, not called
    "(" * 1000, "x := 1",  # eval() cannot parse these either: nothing runs
])
def test_values_are_not_code(text):
    assert not is_code(text)


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch x')", "open('/etc/passwd').read()",
    "sys.modules['os']", "lambda: 0", "[x for x in range(3)]", "{x: 1 for x in y}", "(x for x in y)",
    "f'{x!r}'", "9**9**9", "'a' * 10**10", "1 << 10**9", "'%999999999d' % 1", "${oc.env:HOME}",
    "(x := 1)",
])
def test_code_is_code(text):
    assert is_code(text)


def test_find_code_names_the_field_in_nested_cfg_args_lists_and_bytes():
    code = "__import__('os').getcwd()"
    assert find_code({"cfg": {"model": argparse.Namespace(a="x", b=[1, "2", code])}}) == "cfg.model.b[2]"
    assert find_code({"args": argparse.Namespace(lr=[0.1], betas="(0.9, 0.98)", cutoff=code.encode())}) == "args.cutoff"
    assert find_code({"cfg": None, "args": None, "model": {"w": code}}) is None  # only the configuration
    assert find_code({"cfg": {"task": {"data": "/data", "eval_bleu_args": '{"beam": 4}'}}}) is None


# --- real checkpoints pass -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_real_checkpoints_pass_in_both_forms(genuine, name, tmp_path):
    path, argv = genuine[name]
    state = load_checkpoint(str(path))  # the cfg form, as fairseq writes it now
    strings = set(strings_of(state["cfg"]))
    assert {str(path.parent), "checkpoint_last.pt"} <= strings  # paths and names are examined...
    if "adam_sage" in name:
        assert "(0.9, 0.98)" in strings  # ...and literals
    legacy = tmp_path / "legacy.pt"
    torch.save(legacy_form(state, argv), legacy)
    legacy_state = load_checkpoint(str(legacy))
    assert isinstance(legacy_state["args"], argparse.Namespace) and legacy_state["cfg"] is None
    assert str(path.parent) in set(strings_of(legacy_state["args"]))


def test_a_real_checkpoint_in_the_legacy_form_translates(genuine, toy_data_bin, tmp_path):
    path, argv = genuine["iwslt14 adam_sage"]
    legacy = tmp_path / "legacy.pt"
    torch.save(legacy_form(load_checkpoint(str(path)), argv), legacy)
    proc = fairseq("generate", toy_data_bin, "--path", legacy, "--cpu", "--gen-subset", "valid", "--beam", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\nH-") == 40


# --- hostile checkpoints are refused -----------------------------------------------------------------


def make_hostile(genuine, tmp_path, form: str):
    """A real plain-adam checkpoint whose ``adaptive_softmax_cutoff`` (in ``cfg.model``, or in the
    legacy ``args``) is code that creates a marker file; returns (path, marker, the refused field)."""
    path, argv = genuine["multi30k adam"]
    state = load_checkpoint(str(path))
    marker = tmp_path / "payload-ran"
    payload = f"__import__('os').system('touch {marker}') or None"
    if form == "cfg":
        setattr(state["cfg"]["model"], PAYLOAD_FIELD, payload)  # cfg.model is a Namespace in fairseq's transformer
    else:
        state = legacy_form(state, argv)
        setattr(state["args"], PAYLOAD_FIELD, payload)
    hostile_path = tmp_path / "hostile.pt"
    torch.save(state, hostile_path)
    return hostile_path, marker, f"{form}.model.{PAYLOAD_FIELD}" if form == "cfg" else f"args.{PAYLOAD_FIELD}"


@pytest.fixture(params=["cfg", "args"])
def hostile(request, genuine, tmp_path):
    return make_hostile(genuine, tmp_path, request.param)


def refusal(path, field) -> str:
    return f"{path}: refused to load, {field} holds code, not a value; only load checkpoints you trust"


def test_the_hostile_checkpoint_runs_its_payload_in_fairseq_alone(hostile, toy_data_bin):
    """fairseq without the plugin (and with torch's unsafe default, which the Namespace needs)."""
    path, marker, _ = hostile
    fairseq("generate", toy_data_bin, "--path", path, "--cpu", "--gen-subset", "valid", plugin=False,
            env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert marker.exists(), "fairseq evaluates the string"


def test_load_checkpoint_refuses_the_hostile_checkpoint(hostile):
    path, marker, field = hostile
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(str(path))
    assert str(refused.value) == refusal(path, field)
    assert not marker.exists()


def test_fairseq_generate_refuses_the_hostile_checkpoint(hostile, toy_data_bin):
    """Even where torch's default is made unsafe, as in the run above that executed the payload."""
    path, marker, field = hostile
    proc = fairseq("generate", toy_data_bin, "--path", path, "--cpu", "--gen-subset", "valid",
                   env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"fairseq-sage: error: {refusal(path, field)}"
    assert not marker.exists()


def test_every_other_loader_refuses_it(genuine, toy_data_bin, tmp_path):
    """fairseq-interactive, fairseq-train --restore-file, the analysis CLI and averaging (the cfg form;
    the tests above take both forms through load_checkpoint and fairseq's loader)."""
    path, marker, field = make_hostile(genuine, tmp_path, "cfg")
    source = tmp_path / "source.txt"
    source.write_text("w1 w2 w3\n")
    runs = {
        "interactive": fairseq("interactive", toy_data_bin, "--path", path, "--cpu", "--input", source,
                               "--source-lang", "src", "--target-lang", "tgt"),
        "train --restore-file": fairseq("train", *train_args(toy_data_bin, tmp_path / "save", "--restore-file",
                                                             path, "--max-update", "3"), plugin=False),
        "analysis": run([sys.executable, "-m", "fairseq_sage.analysis", toy_data_bin, "--path", path, "--cpu",
                         "--output-dir", tmp_path / "analysis"]),
    }
    for tool, proc in runs.items():
        assert proc.returncode == 1, (tool, proc.stderr[-2000:])
        assert proc.stderr.strip().splitlines()[-1] == f"fairseq-sage: error: {refusal(path, field)}", tool
    average = run([sys.executable, "-m", "fairseq_sage.tools.average_checkpoints", "--inputs", path,
                   "--output", tmp_path / "avg.pt"])
    assert average.returncode == 2
    assert average.stderr.strip().splitlines()[-1] == f"fairseq-sage-average-checkpoints: error: {refusal(path, field)}"
    assert not marker.exists()
    assert not (tmp_path / "save" / "checkpoint_last.pt").exists() and not (tmp_path / "avg.pt").exists()
    assert not (tmp_path / "analysis").exists()
