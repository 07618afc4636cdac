"""adam_sage, adamax_sage, sgd_sage and lion_sage through fairseq's own CLIs on a tiny synthetic corpus."""

import math
import re
import zipfile

import numpy as np
import pytest
import torch

import fairseq_sage.fairseq  # noqa: F401  (registers the optimizers in this process, as --user-dir does)
from conftest import USER_DIR, run_fairseq, train_args
from fairseq_sage.checkpoints import load_checkpoint
from helpers import BLEU_LINE, train_log


def inverse_sqrt_lr(num_updates, lr=3e-3, warmup=10, init=1e-7):
    """fairseq's inverse_sqrt schedule, from its definition."""
    if num_updates < warmup:
        return init + num_updates * (lr - init) / warmup
    return lr * math.sqrt(warmup) / math.sqrt(num_updates)


@pytest.fixture(scope="module")
def adam_sage_run(toy_data_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("adam_sage")
    proc = run_fairseq("train", *train_args(toy_data_bin, save_dir, "--max-update", "60"))
    return proc, save_dir


def test_loss_falls_and_lr_follows_inverse_sqrt(adam_sage_run):
    proc, _ = adam_sage_run
    log = train_log(proc)
    assert [u for u, _, _ in log] == list(range(1, 61))
    first_losses = [loss for _, loss, _ in log[:5]]
    last_losses = [loss for _, loss, _ in log[-5:]]
    assert sum(last_losses) / 5 < 0.8 * sum(first_losses) / 5
    for num_updates, _, lr in log:
        assert lr == pytest.approx(inverse_sqrt_lr(num_updates), rel=1e-3)


def test_checkpoint_holds_sensitivity_ema_and_step(adam_sage_run):
    _, save_dir = adam_sage_run
    state = load_checkpoint(str(save_dir / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["optimizer_name"] == "FairseqAdamSAGE"
    model_shapes = sorted(tuple(t.shape) for t in state["model"].values() if t.dtype.is_floating_point)
    optimizer_state = state["last_optimizer_state"]["state"]
    assert optimizer_state, "no optimizer state saved"
    for param_state in optimizer_state.values():
        assert param_state["step"] == 60
        ema = param_state["sensitivity_ema"]
        assert ema.dtype == torch.float32 and tuple(ema.shape) in model_shapes
        assert torch.all(ema >= 0)
    assert any(s["sensitivity_ema"].abs().sum() > 0 for s in optimizer_state.values())
    group = state["last_optimizer_state"]["param_groups"][0]
    assert group["sage"] is True and group["beta0"] == 0.8 and group["betas"] == (0.9, 0.98)


def test_generate_prints_a_bleu_line(adam_sage_run, toy_data_bin):
    _, save_dir = adam_sage_run
    proc = run_fairseq(
        "generate", toy_data_bin, "--user-dir", USER_DIR, "--path", save_dir / "checkpoint_best.pt",
        "--beam", "5", "--batch-size", "32", "--cpu",
    )
    match = BLEU_LINE.search(proc.stdout)
    assert match, proc.stdout[-2000:]
    assert 0.0 <= float(match.group(1)) <= 100.0
    assert proc.stdout.count("\nH-") == 40


@pytest.mark.parametrize(
    "optimizer, flags",
    [
        ("adamax_sage", ["--adamax-betas", "(0.9, 0.98)", "--sage-beta0", "0.6"]),
        ("sgd_sage", ["--momentum", "0.9", "--lr", "0.3", "--sage-beta0", "0.6"]),
        ("lion_sage", ["--lion-betas", "(0.9, 0.99)", "--lr", "1e-3", "--weight-decay", "0.01"]),
    ],
)
def test_adamax_sgd_and_lion_sage_train(toy_data_bin, tmp_path, optimizer, flags):
    args = train_args(toy_data_bin, tmp_path, "--max-update", "30", "--clip-norm", "1.0", "--update-freq", "2")
    args[args.index("adam_sage")] = optimizer
    args[args.index("--adam-betas"):args.index("--adam-betas") + 2] = []
    proc = run_fairseq("train", *args, *flags)
    log = train_log(proc)
    assert len(log) == 30
    assert sum(loss for _, loss, _ in log[-5:]) < sum(loss for _, loss, _ in log[:5])
    state = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))["last_optimizer_state"]["state"]
    assert all(s["step"] == 30 and "sensitivity_ema" in s for s in state.values())


def test_sage_params_selects_parameters_by_name(toy_data_bin, tmp_path):
    proc = run_fairseq(
        "train", *train_args(toy_data_bin, tmp_path, "--max-update", "3", "--sage-params", r"decoder\.layers"),
    )
    checkpoint = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    decoder_layer_params = [
        name for name in checkpoint["model"] if name.startswith("decoder.layers.")
        and not name.endswith("_float_tensor")
    ]
    groups = checkpoint["last_optimizer_state"]["param_groups"]
    assert [g["sage"] for g in groups] == [True, False]
    assert len(groups[0]["params"]) == len(decoder_layer_params)
    state = checkpoint["last_optimizer_state"]["state"]
    assert all("sensitivity_ema" in state[i] for i in groups[0]["params"])
    assert not any("sensitivity_ema" in state[i] for i in groups[1]["params"])
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sage-beta0", "1.5"], "--sage-beta0 must be in [0, 1)"),
        (["--sage-eps", "inf"], "--sage-eps must be finite, got inf; change the flag"),
        (["--sage-params", "no_such_parameter"], "--sage-params 'no_such_parameter' matches no parameter"),
    ],
)
def test_bad_flags_fail_with_one_line_before_writing(toy_data_bin, tmp_path, flags, message):
    save_dir = tmp_path / "checkpoints"
    proc = run_fairseq("train", *train_args(toy_data_bin, save_dir, "--max-update", "2"), *flags, check=False)
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("fairseq-sage: error: ") and message in last_line, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not save_dir.exists() or not any(save_dir.iterdir()), "a file was written"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"sage_beta0": -0.2}, "--sage-beta0 must be in [0, 1)"),
        ({"lr": [-0.001]}, "--lr must be >= 0"),
        ({"adam_eps": -1e-8}, "--adam-eps must be >= 0"),
        ({"sage_eps": -1.0}, "--sage-eps must be > 0"),
        ({"sage_eps": 0.0}, "--sage-eps must be > 0"),
        ({"lr": [float("inf")]}, "--lr must be finite, got inf"),
        ({"adam_eps": float("nan")}, "--adam-eps must be finite, got nan"),
        ({"weight_decay": float("inf")}, "--weight-decay must be finite, got inf"),
        ({"sage_beta0": float("nan")}, "--sage-beta0 must be finite, got nan"),
        ({"adam_betas": "(0.9, inf)"}, "--adam-betas must be a pair like '(0.9, 0.98)'"),
        ({"adam_betas": "(0.9, 1e999)"}, "--adam-betas must be finite, got inf"),
        ({"_name": "sgd_sage", "momentum": float("inf")}, "--momentum must be finite, got inf"),
        ({"adam_betas": "(0.9, 1.2)"}, "--adam-betas must be in [0, 1)"),
        ({"adam_betas": "0.9"}, "--adam-betas must be a pair"),
        ({"sage_params": "(weight"}, "--sage-params '(weight' is not a valid regular expression"),
        ({"_name": "adamax_sage", "adamax_eps": -1.0}, "--adamax-eps must be >= 0"),
        ({"_name": "sgd_sage", "momentum": 1.0}, "--momentum must be in [0, 1)"),
        ({"_name": "lion_sage", "lion_betas": "(0.9, 1.5)"}, "--lion-betas must be in [0, 1)"),
        ({"_name": "lion_sage", "lion_betas": "0.9"}, "--lion-betas must be a pair"),
    ],
)
def test_bad_flag_values_are_named_in_the_error(config, message):
    from fairseq import optim
    from omegaconf import OmegaConf

    import fairseq_sage.fairseq  # noqa: F401  (registers the SAGE optimizers, also when this test runs alone)

    cfg = OmegaConf.create(dict({"_name": "adam_sage", "lr": [1e-3]}, **config))
    with pytest.raises(SystemExit, match=re.escape(f"fairseq-sage: error: {message}")):
        optim.build_optimizer(cfg, list(torch.nn.Linear(2, 2).parameters()))


def test_resume_from_checkpoint_last_is_bit_identical(toy_data_bin, tmp_path):
    """24 updates straight == 12 updates, stop, resume from checkpoint_last, 12 more (mid-epoch)."""
    exact = ("--update-epoch-batch-itr", "True", "--save-interval-updates", "6", "--dropout", "0.1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_fairseq("train", *train_args(toy_data_bin, straight, "--max-update", "24", *exact))
    run_fairseq("train", *train_args(toy_data_bin, resumed, "--max-update", "12", *exact))
    proc = run_fairseq("train", *train_args(toy_data_bin, resumed, "--max-update", "24", *exact))
    assert "Loaded checkpoint" in proc.stdout + proc.stderr

    a = load_checkpoint(str(straight / "checkpoint_last.pt"))
    b = load_checkpoint(str(resumed / "checkpoint_last.pt"))
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == 24
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, param_state in a["last_optimizer_state"]["state"].items():
        other = b["last_optimizer_state"]["state"][index]
        assert param_state["step"] == other["step"]
        for key in ("exp_avg", "exp_avg_sq", "sensitivity_ema"):
            assert torch.equal(param_state[key], other[key]), (index, key)


def test_resume_without_update_epoch_batch_itr_warns(toy_data_bin, tmp_path):
    proc = run_fairseq("train", *train_args(toy_data_bin, tmp_path, "--max-update", "1"))
    assert "--update-epoch-batch-itr True" in proc.stdout + proc.stderr


def test_a_checkpoint_trained_with_eval_bleu_loads_and_translates(toy_data_bin, tmp_path):
    """--eval-bleu keeps numpy arrays (BLEU n-gram counts) in the checkpoint's saved meters."""
    run_fairseq("train", *train_args(
        toy_data_bin, tmp_path, "--max-update", "2", "--eval-bleu", "--eval-bleu-args", '{"beam": 1}',
        "--eval-bleu-print-samples", "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"))
    checkpoint = tmp_path / "checkpoint_best.pt"
    with zipfile.ZipFile(checkpoint) as archive:
        pickle_name = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
        assert b"numpy" in archive.read(pickle_name)  # torch alone refuses these globals
    assert holds_a_numpy_array(load_checkpoint(str(checkpoint))["extra_state"]["metrics"])
    proc = run_fairseq("generate", toy_data_bin, "--user-dir", USER_DIR, "--path", checkpoint,
                       "--beam", "5", "--batch-size", "32", "--cpu")
    assert BLEU_LINE.search(proc.stdout) and proc.stdout.count("\nH-") == 40


def holds_a_numpy_array(value) -> bool:
    """Whether ``value`` is, or contains (in dicts, lists and tuples), a numpy array."""
    if isinstance(value, np.ndarray):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and any(holds_a_numpy_array(v) for v in value)
