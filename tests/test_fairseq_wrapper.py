"""--optimizer sage --sage-base NAME: fairseq's own optimizers, their own flags, wrapped in SAGE."""

import math
import re

import pytest
import torch

from conftest import USER_DIR, run_fairseq, train_args
from fairseq_sage import SAGE
from fairseq_sage.checkpoints import load_checkpoint
from helpers import BLEU_LINE, build_sage_optimizer, reference_multiplier, sage_train_args, train_log


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--sage-base", "nag"], {"momentum": 0.99, "weight_decay": 0.0}),
        (["--sage-base", "sgd"], {"momentum": 0.0}),
        (["--sage-base", "nag", "--momentum", "0.9", "--weight-decay", "0.1"], {"momentum": 0.9, "weight_decay": 0.1}),
        (["--sage-base", "adafactor", "--clip-threshold", "2", "--adafactor-eps", "(1e-30, 2e-3)", "--wd", "0.1"],
         {"clip_threshold": 2.0, "eps": (1e-30, 2e-3), "weight_decay": 0.1, "lr": 0.01}),
        (["--sage-base", "adam", "--adam-betas", "(0.9, 0.98)"], {"betas": (0.9, 0.98)}),
    ],
)
def test_the_base_gets_its_own_flags_and_defaults(flags, expected):
    optimizer = build_sage_optimizer(list(torch.nn.Linear(3, 2).parameters()), *flags, "--sage-beta0", "0.6")
    group = optimizer.optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected
    assert optimizer.optimizer.beta0 == 0.6


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sage-base", "composite"], "--sage-base composite cannot be wrapped"),
        (["--sage-base", "adam_sage"], "--sage-base adam_sage applies SAGE itself"),
        (["--sage-base", "adafactor", "--momentum", "0.9"], "--momentum is not a flag of --sage-base adafactor"),
        ([], "--optimizer sage needs --sage-base NAME; valid names: adadelta, adafactor, adagrad, adam"),
        (["--sage-base", "adafactor", "--scale-parameter", "--weight-decay", "0.1"],
         "with --scale-parameter its weight decay cannot be separated from its update"),
        (["--sage-base", "sgd", "--sage-eps", "inf"], "--sage-eps must be finite"),
    ],
)
def test_what_cannot_be_wrapped_is_one_clear_error(flags, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        build_sage_optimizer(list(torch.nn.Linear(3, 2).parameters()), *flags)


def test_sage_impl_reaches_the_wrapper():
    params = list(torch.nn.Linear(3, 2).parameters())
    assert build_sage_optimizer(params, "--sage-base", "nag").optimizer.impl == "auto"
    assert build_sage_optimizer(params, "--sage-base", "nag", "--sage-impl", "foreach").optimizer.impl == "foreach"


def test_sage_impl_rejects_unknown_values(capsys):
    with pytest.raises(SystemExit):
        build_sage_optimizer(list(torch.nn.Linear(3, 2).parameters()), "--sage-base", "nag", "--sage-impl", "compiled")
    assert "--sage-impl: invalid choice: 'compiled' (choose from 'auto', 'foreach', 'cpp')" in capsys.readouterr().err


def test_sage_impl_cpp_without_the_kernel_is_one_clear_error(monkeypatch):
    import fairseq_sage.fairseq.wrapper as plugin
    import fairseq_sage.optim.wrapper as wrapper

    for module in (plugin, wrapper):
        monkeypatch.setattr(module, "cpp_kernel_error", lambda: "no C++ compiler found")
    message = "--sage-impl cpp: no C++ compiler found; use --sage-impl auto or foreach"
    with pytest.raises(SystemExit, match=re.escape(message)):
        build_sage_optimizer(list(torch.nn.Linear(3, 2).parameters()), "--sage-base", "nag", "--sage-impl", "cpp")


def rms(x):
    return x.pow(2).mean().sqrt().item()


def fairseq_sage(*flags):
    """(wrapped, plain base) builders for ``--optimizer sage`` with ``flags`` and ``--weight-decay wd``."""
    return (lambda params, wd: build_sage_optimizer(params, *flags, "--weight-decay", str(wd)),
            lambda params, wd: build_sage_optimizer(params, *flags, "--weight-decay", str(wd)).base)


def relative_step_adafactor(params, wd):
    from fairseq.optim.adafactor import Adafactor

    return Adafactor(params, lr=None, relative_step=True, scale_parameter=True, weight_decay=wd)


@pytest.mark.parametrize(
    "builders, decay",
    [
        (fairseq_sage("--sage-base", "nag"), lambda theta, t: 0.01 * 0.3),
        (fairseq_sage("--sage-base", "adam"), lambda theta, t: 0.01 * 0.3),
        (fairseq_sage("--sage-base", "adafactor"), lambda theta, t: 0.01 * 0.3),
        # fairseq's Adafactor with its relative step ρ = min(1e-2, 1/√t)·max(ε2, RMS(θ)): decay λ·ρ
        ((lambda params, wd: SAGE(relative_step_adafactor(params, wd)), relative_step_adafactor),
         lambda theta, t: 0.3 * min(1e-2, 1 / math.sqrt(t)) * max(1e-3, rms(theta))),
    ],
    ids=["nag", "adam", "adafactor", "adafactor-relative-step"],
)
def test_fairseq_decoupled_decay_stays_unmodulated(builders, decay):
    """θ = (1 − c)·θ_old + m ⊙ Δ, with Δ the update of the plain base optimizer (no SAGE) without
    weight decay, stepped from the same weights and gradients."""
    import fairseq_sage.fairseq  # noqa: F401  (the decay rules of fairseq's optimizers)

    weights = torch.nn.Linear(4, 3)
    undecayed_weights = torch.nn.Linear(4, 3)
    undecayed_weights.load_state_dict(weights.state_dict())
    wrapped = builders[0](list(weights.parameters()), 0.3)
    undecayed = builders[1](list(undecayed_weights.parameters()), 0)
    emas = [torch.zeros_like(p) for p in weights.parameters()]
    generator = torch.Generator().manual_seed(0)
    for t in range(1, 4):
        olds = [p.detach().clone() for p in weights.parameters()]
        for p, q in zip(weights.parameters(), undecayed_weights.parameters()):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        wrapped.step()
        undecayed.step()
        for i, (p, q, old) in enumerate(zip(weights.parameters(), undecayed_weights.parameters(), olds)):
            multiplier, emas[i] = reference_multiplier(old, p.grad, emas[i], t, 0.8, 1e-12)
            expected = (1 - decay(old, t)) * old + multiplier * (q.detach() - old)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)
            q.data.copy_(p.detach())


@pytest.fixture(scope="module")
def adafactor_run(toy_data_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("sage_adafactor")
    flags = ("--sage-base", "adafactor", "--weight-decay", "0.01", "--max-update", "20")
    return run_fairseq("train", *sage_train_args(toy_data_bin, save_dir, *flags)), save_dir


def test_adafactor_sage_trains_and_its_checkpoint_holds_the_sensitivities(adafactor_run):
    proc, save_dir = adafactor_run
    log = train_log(proc)
    assert [u for u, _, _ in log] == list(range(1, 21))
    assert sum(loss for _, loss, _ in log[-5:]) < 0.8 * sum(loss for _, loss, _ in log[:5])
    assert "sage_mult_mean=" in proc.stdout + proc.stderr
    state = load_checkpoint(str(save_dir / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["optimizer_name"] == "FairseqSAGE"
    optimizer_state = state["last_optimizer_state"]
    assert optimizer_state["sage"]["beta0"] == 0.8
    model_shapes = sorted(tuple(t.shape) for t in state["model"].values() if t.dtype.is_floating_point)
    for index in optimizer_state["sage"]["params"]:
        entry = optimizer_state["state"][index]
        assert entry["sage_step"] == entry["step"] == 20
        assert entry["sensitivity_ema"].dtype == torch.float32 and tuple(entry["sensitivity_ema"].shape) in model_shapes
        assert "exp_avg_sq_row" in entry or "exp_avg_sq" in entry, "Adafactor's own state"
    assert optimizer_state["param_groups"][0]["weight_decay"] == 0.01


def test_fairseq_generate_loads_the_adafactor_sage_checkpoint(adafactor_run, toy_data_bin):
    _, save_dir = adafactor_run
    proc = run_fairseq("generate", toy_data_bin, "--user-dir", USER_DIR, "--path", save_dir / "checkpoint_best.pt",
                       "--beam", "5", "--batch-size", "32", "--cpu")
    assert BLEU_LINE.search(proc.stdout), proc.stdout[-2000:]
    assert proc.stdout.count("\nH-") == 40


def test_resuming_adafactor_sage_continues_bit_identically(adafactor_run, toy_data_bin, tmp_path):
    _, straight = adafactor_run
    flags = ("--sage-base", "adafactor", "--weight-decay", "0.01")
    run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, *flags, "--max-update", "10"))
    proc = run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, *flags, "--max-update", "20"))
    assert "Loaded checkpoint" in proc.stdout + proc.stderr
    a = load_checkpoint(str(straight / "checkpoint_last.pt"))
    b = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, entry in a["last_optimizer_state"]["state"].items():
        assert torch.equal(entry["sensitivity_ema"], b["last_optimizer_state"]["state"][index]["sensitivity_ema"])


def test_resuming_with_other_flags_runs_and_records_the_command_lines_values(toy_data_bin, tmp_path):
    base = ("--sage-base", "nag", "--momentum", "0.9", "--lr", "0.05")
    run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, *base, "--max-update", "5"))
    changed = ("--sage-base", "nag", "--momentum", "0.8", "--lr", "0.05", "--sage-beta0", "0.3")
    proc = run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, *changed, "--max-update", "8"))
    output = proc.stdout + proc.stderr
    assert "fairseq-sage: resumed with sage_beta0 0.8 -> 0.3 (the command line's value)" in output
    assert "fairseq-sage: resumed with momentum 0.9 -> 0.8 (the command line's value)" in output
    state = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))["last_optimizer_state"]
    assert state["sage"]["beta0"] == 0.3
    assert state["param_groups"][0]["momentum"] == 0.8


@pytest.mark.parametrize("flags", [["--memory-efficient-fp16"], ["--fp16", "--fp16-no-flatten-grads"]],
                         ids=["memory-efficient-fp16", "fp16-no-flatten-grads"])
def test_sage_over_adafactor_trains_in_half_precision_on_cpu(toy_data_bin, tmp_path, flags):
    """fairseq's fp16 wrappers around --optimizer sage: a real run (the two that run on a CPU)."""
    run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, "--sage-base", "adafactor",
                                          "--max-update", "4", "--no-epoch-checkpoints", *flags))
    checkpoint = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    optimizer = checkpoint["last_optimizer_state"]
    assert optimizer["loss_scale"] > 0
    weights = [w for name, w in checkpoint["model"].items() if not name.endswith(".version")]
    assert optimizer["sage"]["params"] == list(range(len(weights)))
    for index, weight in enumerate(weights):
        entry = optimizer["state"][index]
        assert entry["sage_step"] == 4
        assert entry["sensitivity_ema"].dtype == torch.float32 and entry["sensitivity_ema"].shape == weight.shape
        assert torch.isfinite(entry["sensitivity_ema"]).all() and entry["sensitivity_ema"].abs().sum() > 0


def test_nag_sage_trains_with_its_momentum_flag(toy_data_bin, tmp_path):
    flags = ("--sage-base", "nag", "--momentum", "0.95", "--lr", "0.1", "--max-update", "20")
    args = sage_train_args(toy_data_bin, tmp_path, *flags)
    lr = args.index("--lr")
    proc = run_fairseq("train", *(args[:lr] + args[lr + 2:]))  # without train_args' --lr 3e-3
    log = train_log(proc)
    assert sum(loss for _, loss, _ in log[-5:]) < 0.8 * sum(loss for _, loss, _ in log[:5])
    state = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))["last_optimizer_state"]
    assert state["param_groups"][0]["momentum"] == 0.95
    assert all({"momentum_buffer", "sensitivity_ema"} <= set(entry) for entry in state["state"].values())


def test_an_unknown_base_stops_fairseq_train_with_one_line_naming_the_valid_ones(toy_data_bin, tmp_path):
    proc = run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, "--sage-base", "adamw"), check=False)
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("fairseq-sage: error: --sage-base 'adamw' is not an optimizer registered in fairseq")
    valid = last_line.split("valid names: ")[1].split(", ")
    assert {"adadelta", "adafactor", "adagrad", "adam", "adamax", "nag", "sgd"} <= set(valid)
    assert not {"composite", "sage", "adam_sage"} & set(valid)
    assert "Traceback" not in proc.stderr
