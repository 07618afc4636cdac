"""Checkpoints whose configuration holds code: refused by every fairseq CLI and tool, the payload never runs;
real checkpoints of every architecture fairseq ships load.

fairseq ``eval()``s some configuration strings while it builds a model (``utils.eval_str_list`` on
``adaptive_softmax_cutoff`` in every transformer decoder, ``utils.eval_bool`` on an LSTM's
``decoder_attention``, about forty call sites), so a checkpoint with a string of code there, and
nothing but primitive types in its pickle, runs that code in ``fairseq-generate``. Those fields are
evaluated by our own evaluator (tests/test_config_values.py has the whole payload family); here the
real programs meet a few payloads that the earlier check let through (leading white space, bytes
with a BOM), and real checkpoints of the recipes' runs, of every architecture fairseq ships that
trains on a toy translation or language-modelling task (fconv with its default layers), and of a run
with ``--sage-params 'fc[12]'`` in ``--save-dir 'run(2)/exp[1]'`` load and resume.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_TRANSFORMER, USER_DIR, run_fairseq, train_args
from forked_cli import run_module
from helpers import torch_default_environment
from fairseq_sage.checkpoints import CheckpointError, load_checkpoint

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
    return run_module(f"fairseq_cli.{tool}", *args, *(["--user-dir", USER_DIR] if plugin else []),
                      env=torch_default_environment(env), cwd=REPO)


def run(command, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=torch_default_environment(env), capture_output=True,
                          text=True, timeout=900)


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


# --- real checkpoints pass -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_real_checkpoints_pass_in_both_forms(genuine, name, tmp_path):
    path, argv = genuine[name]
    state = load_checkpoint(str(path))  # the cfg form, as fairseq writes it now
    strings = set(strings_of(state["cfg"]))
    assert {str(path.parent), "checkpoint_last.pt"} <= strings  # paths and names are data, left as they are...
    if "adam_sage" in name:
        assert "(0.9, 0.98)" in strings  # ...and a plain literal fairseq evaluates stays as it was
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




# --- every architecture fairseq ships, our flags' values and paths ------------------------------------

TRANSLATION_ARCHITECTURES = {
    "lstm": ["--encoder-embed-dim", "32", "--encoder-hidden-size", "32", "--decoder-embed-dim", "32",
             "--decoder-hidden-size", "32", "--decoder-out-embed-dim", "32"],
    "fconv_iwslt_de_en": [],  # its defaults: encoder_layers '[(256, 3)] * 4', which fairseq evaluates
    "fconv_self_att": ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--decoder-out-embed-dim", "32",
                       "--encoder-layers", "[(32, 3)] * 2", "--decoder-layers", "[(32, 3)] * 2"],
    "lightconv": ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
                  "--decoder-embed-dim", "32", "--encoder-conv-dim", "32", "--decoder-conv-dim", "32",
                  "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
                  "--decoder-attention-heads", "2", "--encoder-kernel-size-list", "[3]",
                  "--decoder-kernel-size-list", "[3]"],
}
LM_ARCHITECTURES = {
    "transformer_lm": ["--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
                       "--decoder-attention-heads", "2"],
    "lstm_lm": ["--decoder-embed-dim", "32", "--decoder-hidden-size", "32", "--decoder-out-embed-dim", "32"],
    "fconv_lm": ["--decoder-embed-dim", "32", "--decoder-layers", "[(32, 3)] * 2", "--decoder-out-embed-dim", "32"],
    "lightconv_lm": ["--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
                     "--decoder-attention-heads", "2", "--decoder-kernel-size-list", "[3]"],
}
"""The model families fairseq ships that train on a translation or language-modelling task with
text alone (tiny sizes, except fconv_iwslt_de_en, which keeps its defaults)."""
LM_TASK = ["--task", "language_modeling", "--tokens-per-sample", "32"]
OUR_FLAGS_RUN = "run(2)/exp[1]"
"""A relative --save-dir that reads as a call and a subscript, for a run with --sage-params 'fc[12]'."""

TRAIN_IN_ONE_PROCESS = """
import json, sys
from fairseq_cli import train
for argv in json.loads(sys.argv[1]):
    sys.argv = ["fairseq-train", *argv]
    train.cli_main()
"""
"""fairseq-train's own entry point for each command line in turn, in one process (what takes time
in a tiny run is importing fairseq, once here)."""


def architecture_argv(data_bin: Path, save_dir, arch: str, flags: list, *extra) -> list:
    """conftest's fairseq-train command line for one update of ``arch`` with ``flags`` (no transformer sizes)."""
    argv = [str(a) for a in train_args(data_bin, save_dir, "--max-update", "1", "--no-epoch-checkpoints", *extra)]
    del argv[argv.index("--arch"):argv.index("--arch") + len(TINY_TRANSFORMER)]
    return argv + ["--arch", arch, *flags]


@pytest.fixture(scope="module")
def lm_data_bin(toy_data_bin, tmp_path_factory) -> Path:
    """The toy corpus's source side, binarized for language modelling."""
    text = toy_data_bin.parent
    destination = tmp_path_factory.mktemp("lm") / "data-bin"
    run_fairseq("preprocess", "--only-source", "--trainpref", text / "train.src", "--validpref", text / "valid.src",
                "--destdir", destination, "--workers", "1")
    return destination


@pytest.fixture(scope="module")
def architectures(toy_data_bin, lm_data_bin, tmp_path_factory):
    """arch -> checkpoint_last.pt of one update; also the our-flags run, trained for one update and
    then resumed (from its relative save dir) for a second: returns (checkpoints, that run's folder, output)."""
    folder = tmp_path_factory.mktemp("architectures")
    argvs = [architecture_argv(toy_data_bin, folder / arch, arch, flags)
             for arch, flags in TRANSLATION_ARCHITECTURES.items()]
    argvs += [architecture_argv(lm_data_bin, folder / arch, arch, flags + LM_TASK)
              for arch, flags in LM_ARCHITECTURES.items()]
    for updates in ("1", "2"):  # the second resumes from checkpoint_last.pt, as a run continued later does
        argvs.append(architecture_argv(toy_data_bin, OUR_FLAGS_RUN, "transformer", TINY_TRANSFORMER[2:], "--max-update",
                                       updates, "--sage-params", "fc[12]"))
    proc = run([sys.executable, "-c", TRAIN_IN_ONE_PROCESS, json.dumps(argvs)], cwd=folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    checkpoints = {arch: folder / arch / "checkpoint_last.pt"
                   for arch in {**TRANSLATION_ARCHITECTURES, **LM_ARCHITECTURES}}
    return checkpoints, folder / OUR_FLAGS_RUN, proc.stdout + proc.stderr


def test_every_translation_architecture_translates_with_the_plugin(architectures, toy_data_bin):
    """fairseq-generate loads all four as one ensemble (fconv_iwslt_de_en with its default layers)."""
    checkpoints, _, _ = architectures
    paths = ":".join(str(checkpoints[arch]) for arch in TRANSLATION_ARCHITECTURES)
    proc = fairseq("generate", toy_data_bin, "--path", paths, "--cpu", "--gen-subset", "valid", "--beam", "1",
                   "--max-len-a", "0", "--max-len-b", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\nH-") == 40
    assert load_checkpoint(str(checkpoints["fconv_iwslt_de_en"]))["cfg"]["model"].encoder_layers == str([(256, 3)] * 4)


def test_every_language_model_architecture_scores_with_the_plugin(architectures, lm_data_bin):
    """fairseq-eval-lm, once per model (it takes no ensemble), in one process."""
    checkpoints, _, _ = architectures
    script = ("import sys; from fairseq_cli import eval_lm\n"
              "for path in sys.argv[2:]:\n"
              "    sys.argv = ['fairseq-eval-lm', sys.argv[1], '--path', path, '--cpu', '--gen-subset', 'valid',"
              " '--tokens-per-sample', '32', '--user-dir', %r]\n"
              "    eval_lm.cli_main()\n" % str(USER_DIR))
    proc = run([sys.executable, "-c", script, lm_data_bin, *(checkpoints[arch] for arch in LM_ARCHITECTURES)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    perplexities = re.findall(r"Loss \(base 2\): [0-9.]+, Perplexity: ([0-9.]+)", proc.stdout + proc.stderr)
    assert len(perplexities) == len(LM_ARCHITECTURES)
    assert all(1 < float(p) < 1000 for p in perplexities)  # untrained models on a 32-word vocabulary


def test_our_flags_values_and_paths_are_data(architectures):
    """--sage-params 'fc[12]' and --save-dir 'run(2)/exp[1]' (relative): the run resumes itself."""
    _, run_dir, output = architectures
    assert f"Loaded checkpoint {OUR_FLAGS_RUN}/checkpoint_last.pt (epoch 1 @ 1 updates)" in output
    state = load_checkpoint(str(run_dir / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 2
    assert state["cfg"]["optimizer"]["sage_params"] == "fc[12]"
    assert state["cfg"]["checkpoint"]["save_dir"] == OUR_FLAGS_RUN


# --- hostile checkpoints are refused -----------------------------------------------------------------

TRUST = "only load checkpoints you trust"


def marker_payload(marker: Path) -> str:
    """Code that creates ``marker``, with the leading space that Python's parser rejects and eval() skips."""
    return f" __import__('os').system('touch {marker}') or None"


def refusal(path, field) -> str:
    return (f"{path}: refused to load, {field} is evaluated by fairseq and is not a plain value "
            f"(BoolOp is not a literal); {TRUST}")


def make_hostile(genuine, tmp_path, form: str):
    """A real plain-adam checkpoint whose ``adaptive_softmax_cutoff`` (in ``cfg.model``, or in the
    legacy ``args``) is code behind a leading space; returns (path, marker, the refused field)."""
    path, argv = genuine["multi30k adam"]
    state = load_checkpoint(str(path))
    marker = tmp_path / "payload-ran"
    if form == "cfg":
        setattr(state["cfg"]["model"], PAYLOAD_FIELD, marker_payload(marker))  # cfg.model is a Namespace here
    else:
        state = legacy_form(state, argv)
        setattr(state["args"], PAYLOAD_FIELD, marker_payload(marker))
    hostile_path = tmp_path / "hostile.pt"
    torch.save(state, hostile_path)
    return hostile_path, marker, f"cfg.model.{PAYLOAD_FIELD}" if form == "cfg" else f"args.{PAYLOAD_FIELD}"


@pytest.fixture(params=["cfg", "args"])
def hostile(request, genuine, tmp_path):
    return make_hostile(genuine, tmp_path, request.param)


def test_the_hostile_checkpoint_runs_its_payload_in_fairseq_alone(genuine, toy_data_bin, tmp_path):
    """fairseq without the plugin (and with torch's unsafe default, which the Namespace needs)."""
    path, marker, _ = make_hostile(genuine, tmp_path, "cfg")
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
    """fairseq-interactive, fairseq-train --restore-file, the analysis CLI and averaging (a good
    checkpoint first, the hostile one second: nothing written)."""
    path, marker, field = make_hostile(genuine, tmp_path, "cfg")
    source = tmp_path / "source.txt"
    source.write_text("w1 w2 w3\n")
    runs = {
        "interactive": fairseq("interactive", toy_data_bin, "--path", path, "--cpu", "--input", source,
                               "--source-lang", "src", "--target-lang", "tgt"),
        "train --restore-file": fairseq("train", *train_args(toy_data_bin, tmp_path / "save", "--restore-file",
                                                             path, "--max-update", "3"), plugin=False),
        "analysis": run([sys.executable, "-m", "fairseq_sage.tools.analysis", toy_data_bin, "--path", path, "--cpu",
                         "--output-dir", tmp_path / "analysis"]),
    }
    for tool, proc in runs.items():
        assert proc.returncode == 1, (tool, proc.stderr[-2000:])
        assert proc.stderr.strip().splitlines()[-1] == f"fairseq-sage: error: {refusal(path, field)}", tool
    good, _ = genuine["multi30k adam"]
    average = run([sys.executable, "-m", "fairseq_sage.tools.average_checkpoints", "--inputs", good, path,
                   "--output", tmp_path / "avg.pt"])
    assert average.returncode == 2
    assert average.stderr.strip().splitlines()[-1] == f"fairseq-sage-average-checkpoints: error: {refusal(path, field)}"
    assert "Traceback" not in average.stderr
    assert not marker.exists()
    assert not (tmp_path / "save" / "checkpoint_last.pt").exists() and not (tmp_path / "avg.pt").exists()
    assert not (tmp_path / "analysis").exists()


def test_fairseq_eval_lm_refuses_a_hostile_language_model(architectures, lm_data_bin, tmp_path):
    checkpoints, _, _ = architectures
    state = load_checkpoint(str(checkpoints["transformer_lm"]))
    marker = tmp_path / "payload-ran"
    state["cfg"]["model"]["adaptive_softmax_cutoff"] = marker_payload(marker)  # a dict: a dataclass model
    path = tmp_path / "hostile_lm.pt"
    torch.save(state, path)
    proc = fairseq("eval_lm", lm_data_bin, "--path", path, "--cpu", "--gen-subset", "valid",
                   "--tokens-per-sample", "32")
    assert proc.returncode == 1
    field = "cfg.model.adaptive_softmax_cutoff"
    assert proc.stderr.strip().splitlines()[-1] == f"fairseq-sage: error: {refusal(path, field)}"
    assert not marker.exists()


def test_bytes_with_a_bom_in_an_lstm_run_in_fairseq_alone_and_are_refused_with_the_plugin(architectures, toy_data_bin,
                                                                                          tmp_path):
    """fairseq's eval_bool(args.decoder_attention) of bytes honours their BOM."""
    checkpoints, _, _ = architectures
    state = load_checkpoint(str(checkpoints["lstm"]))
    marker = tmp_path / "payload-ran"
    state["cfg"]["model"].decoder_attention = b"\xef\xbb\xbf" + f"__import__('os').system('touch {marker}')".encode()
    path = tmp_path / "hostile_lstm.pt"
    torch.save(state, path)
    generate = ("generate", toy_data_bin, "--path", path, "--cpu", "--gen-subset", "valid",
                "--max-len-a", "0", "--max-len-b", "1")
    proc = fairseq(*generate)
    assert proc.returncode == 1
    expected = f"{path}: refused to load, cfg.model.decoder_attention holds bytes, not text; {TRUST}"
    assert proc.stderr.strip().splitlines()[-1] == f"fairseq-sage: error: {expected}"
    assert not marker.exists()
    fairseq(*generate, plugin=False, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert marker.exists(), "fairseq evaluates the bytes"
