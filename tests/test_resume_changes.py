"""A resumed run uses the flags it is given: changed hyper-parameters, and --sage-params choosing other weights.

fairseq hands our optimizer the checkpoint's state with ``load_state_dict``. The hyper-parameters
of the command line must replace the checkpoint's (and each change is logged), and every weight's
moments and Ī must move with its name: before names were recorded, a ``--sage-params`` that chose
other weights of the same sizes handed the state of one set of weights to another, silently.
"""

import copy
import logging
import math
import re
import shutil

import pytest
import torch
from torch import nn

from conftest import run_fairseq, train_args
from fairseq_sage.checkpoints import load_checkpoint
from helpers import reference_multiplier

fairseq_options = pytest.importorskip("fairseq.options")
import fairseq_sage.fairseq  # noqa: E402,F401  (registers the SAGE optimizers with fairseq's parser)
from fairseq import optim  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

KEYS, VALUES = r"self_attn\.k_proj", r"self_attn\.v_proj"  # two sets of weights of the same sizes
EXACT = ["--update-epoch-batch-itr", "True", "--no-epoch-checkpoints"]


# --- the adapter, in this process --------------------------------------------------------------------


def fairseq_optimizer(params, *flags):
    """What fairseq-train builds for ``--optimizer adam_sage --lr 0.01 FLAGS``."""
    argv = ["unused-data-dir", "--task", "translation", "--arch", "transformer", "--cpu",
            "--optimizer", "adam_sage", "--lr", "0.01", *flags]
    cfg = convert_namespace_to_omegaconf(
        fairseq_options.parse_args_and_arch(fairseq_options.get_training_parser(), argv))
    return optim.build_optimizer(cfg.optimizer, list(params))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.k_proj, self.v_proj, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.k_proj(x)) * self.v_proj(x))


def trained(*flags, steps=3):
    """A model and its fairseq optimizer after ``steps`` updates."""
    torch.manual_seed(0)
    model = Attention()
    optimizer = fairseq_optimizer(model.parameters(), *flags)
    inputs = torch.randn(16, 4)
    for _ in range(steps):
        optimizer.zero_grad()
        model(inputs).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


def by_name(model, optimizer):
    return {name: optimizer.optimizer.state[param] for name, param in model.named_parameters()}


def test_state_moves_with_its_weight_when_sage_params_chooses_others(caplog):
    model, optimizer = trained("--sage-params", "k_proj")
    saved = optimizer.state_dict()
    assert [g["param_names"] for g in saved["param_groups"]] == [
        ["k_proj.weight", "k_proj.bias"], ["v_proj.weight", "v_proj.bias", "out.weight", "out.bias"]]
    resumed_model = copy.deepcopy(model)
    resumed = fairseq_optimizer(resumed_model.parameters(), "--sage-params", "v_proj")
    with caplog.at_level(logging.INFO):
        resumed.load_state_dict(copy.deepcopy(saved))
    assert "2 gain SAGE (their Ī starts at 0), 2 lose it" in caplog.text
    before, after = by_name(model, optimizer), by_name(resumed_model, resumed)
    for name, state in after.items():
        assert state["step"] == 3
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], before[name][key]), (name, key)
        if name.startswith("v_proj"):
            assert torch.equal(state["sensitivity_ema"], torch.zeros_like(before[name]["exp_avg"])), name
        else:
            assert "sensitivity_ema" not in state, name  # k_proj left SAGE, out never had it
    assert not torch.equal(before["k_proj.weight"]["exp_avg"], before["v_proj.weight"]["exp_avg"])
    inputs = torch.randn(16, 4)
    resumed.zero_grad()
    resumed_model(inputs).pow(2).sum().backward()
    resumed.step()  # the fused kernel takes the moved state
    assert after["v_proj.weight"]["sensitivity_ema"].abs().sum() > 0


def test_the_fairseq_optimizer_survives_deepcopy():
    """(``pickle`` of it fails on fairseq's configuration, whose ``ChoiceEnum`` classes are made at run time.)"""
    model, optimizer = trained("--sage-params", "k_proj", "--sage-beta0", "0.6")
    copied = copy.deepcopy(optimizer)
    assert type(copied) is type(optimizer) and copied.cfg.sage_beta0 == 0.6
    assert copied.optimizer.check_finite is False and copied.param_groups[0]["param_names"] == ["k_proj.weight",
                                                                                                "k_proj.bias"]
    copied_params = [p for group in copied.param_groups for p in group["params"]]
    for param, copy_ in zip([p for group in optimizer.param_groups for p in group["params"]], copied_params):
        param.grad = torch.full_like(param, 0.1)
        copy_.grad = torch.full_like(copy_, 0.1)
    optimizer.step()
    copied.step()
    for a, b in zip([p for group in optimizer.param_groups for p in group["params"]], copied_params):
        assert torch.equal(a, b)


def adam_sage_step(theta, grad, state, lr, betas, eps, beta0, sage_eps):
    """One Adam-SAGE update (no weight decay) from ``state`` (step t − 1 done), by its equations."""
    t = state["step"] + 1
    b1, b2 = betas
    m = b1 * state["exp_avg"] + (1 - b1) * grad
    v = b2 * state["exp_avg_sq"] + (1 - b2) * grad * grad
    multiplier, _ = reference_multiplier(theta, grad, state["sensitivity_ema"], t, beta0, sage_eps)
    return theta - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m * multiplier / (v.sqrt() + eps)


def test_the_command_lines_hyperparameters_are_the_ones_that_run(caplog):
    model, optimizer = trained("--sage-beta0", "0.8", "--adam-betas", "(0.9, 0.98)")
    saved = copy.deepcopy(optimizer.state_dict())
    resumed_model = copy.deepcopy(model)
    resumed = fairseq_optimizer(resumed_model.parameters(), "--sage-beta0", "0.3", "--adam-betas", "(0.8, 0.99)",
                                "--adam-eps", "1e-6", "--sage-eps", "1e-10")
    with caplog.at_level(logging.INFO):
        resumed.load_state_dict(saved)
    for change in ("sage_beta0 0.8 -> 0.3", "adam_betas (0.9, 0.98) -> (0.8, 0.99)", "adam_eps 1e-08 -> 1e-06",
                   "sage_eps 1e-12 -> 1e-10"):
        assert f"fairseq-sage: resumed with {change} (the command line's value)" in caplog.text
    assert "weight_decay" not in caplog.text  # unchanged
    group = resumed.param_groups[0]
    assert (group["beta0"], group["betas"], group["eps"], group["sage_eps"]) == (0.3, (0.8, 0.99), 1e-6, 1e-10)

    weights = {name: p.detach().clone() for name, p in resumed_model.named_parameters()}
    states = {name: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
              for name, s in by_name(resumed_model, resumed).items()}
    resumed.set_lr(0.01)
    resumed.zero_grad()
    resumed_model(torch.randn(16, 4)).pow(2).sum().backward()
    resumed.step()
    for name, param in resumed_model.named_parameters():
        expected = adam_sage_step(weights[name], param.grad, states[name], 0.01, (0.8, 0.99), 1e-6, 0.3, 1e-10)
        torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-7, msg=name)


def test_a_nameless_state_for_other_groups_stops_with_one_line():
    """Checkpoints written before names were recorded are loaded by position: other group sizes stop."""
    model, optimizer = trained("--sage-params", "k_proj")
    saved = copy.deepcopy(optimizer.state_dict())
    for group in saved["param_groups"]:
        del group["param_names"]
    resumed_model = copy.deepcopy(model)  # alive: --sage-params finds names in live modules
    resumed = fairseq_optimizer(resumed_model.parameters(), "--sage-params", "proj")
    with pytest.raises(SystemExit) as stop:
        resumed.load_state_dict(saved)
    assert str(stop.value) == (
        "fairseq-sage: error: cannot resume from the checkpoint's optimizer state: it names no parameters (an "
        "older fairseq-sage wrote it) and its groups hold [2, 4] parameters, this run's (--sage-params 'proj') "
        "[4, 2]; resume with the --sage-params of the checkpoint's run, or resume with --reset-optimizer "
        "(the weights are kept, the optimizer state starts afresh)")


# --- real fairseq-train resumes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(toy_data_bin, tmp_path_factory):
    """checkpoint_last.pt after 4 updates with SAGE on the self-attention key projections only."""
    save_dir = tmp_path_factory.mktemp("first")
    run_fairseq("train", *train_args(toy_data_bin, save_dir, "--max-update", "4", "--sage-params", KEYS, *EXACT))
    return save_dir / "checkpoint_last.pt"


def resume(toy_data_bin, first_run, save_dir, *flags):
    """Resume ``first_run`` in ``save_dir`` to update 6 with ``flags``; (its log, the final checkpoint)."""
    save_dir.mkdir()
    shutil.copy(first_run, save_dir / "checkpoint_last.pt")
    proc = run_fairseq("train", *train_args(toy_data_bin, save_dir, "--max-update", "6", *EXACT, *flags))
    final = load_checkpoint(str(save_dir / "checkpoint_last.pt"))
    assert final["optimizer_history"][-1]["num_updates"] == 6
    return proc.stdout + proc.stderr, final


def sage_names(checkpoint):
    """The parameter names whose state holds Ī, from the checkpoint's own record of names."""
    optimizer_state = checkpoint["last_optimizer_state"]
    return {name for group in optimizer_state["param_groups"] for name, index in zip(group["param_names"], group["params"])
            if "sensitivity_ema" in optimizer_state["state"][index]}


def test_resume_with_sage_params_on_other_weights_of_the_same_sizes(toy_data_bin, first_run, tmp_path):
    log, final = resume(toy_data_bin, first_run, tmp_path / "swapped", "--sage-params", VALUES)
    assert "4 gain SAGE (their Ī starts at 0), 4 lose it (their Ī is dropped)" in log
    values = {name for name in final["model"] if re.search(VALUES, name)}
    assert sage_names(final) == values and len(values) == 4
    assert final["cfg"]["model"].sage_params == VALUES

    # the same resume from a checkpoint whose state was moved to the new groups by hand, by name:
    # the run above must have done exactly that
    checkpoint = load_checkpoint(str(first_run))
    old = checkpoint["last_optimizer_state"]
    state_of = {name: old["state"][index] for group in old["param_groups"]
                for name, index in zip(group["param_names"], group["params"])}
    order = [name for group in old["param_groups"] for name in group["param_names"]]
    new_groups = [[n for n in order if re.search(VALUES, n)], [n for n in order if not re.search(VALUES, n)]]
    moved, position = {}, 0
    for group_names in new_groups:
        for name in group_names:
            moved[position] = {k: v for k, v in state_of[name].items() if k != "sensitivity_ema"}
            if re.search(VALUES, name):
                moved[position]["sensitivity_ema"] = torch.zeros_like(state_of[name]["exp_avg"])
            position += 1
    template = old["param_groups"]
    old["param_groups"] = [dict(template[0], params=list(range(len(new_groups[0]))), param_names=new_groups[0]),
                           dict(template[1], params=list(range(len(new_groups[0]), position)),
                                param_names=new_groups[1])]
    old["state"] = moved
    checkpoint["cfg"]["model"].sage_params = checkpoint["cfg"]["optimizer"]["sage_params"] = VALUES
    by_hand = tmp_path / "by_hand.pt"
    torch.save(checkpoint, by_hand)
    _, reference = resume(toy_data_bin, by_hand, tmp_path / "reference", "--sage-params", VALUES)
    for name, weight in reference["model"].items():
        assert torch.equal(final["model"][name], weight), name
    for index, state in reference["last_optimizer_state"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(final["last_optimizer_state"]["state"][index][key]),
                               torch.as_tensor(value)), (index, key)


def test_resume_with_another_number_of_groups(toy_data_bin, first_run, tmp_path):
    log, final = resume(toy_data_bin, first_run, tmp_path / "all")  # no --sage-params: one group, all SAGE
    assert [g["sage"] for g in final["last_optimizer_state"]["param_groups"]] == [True]
    assert sage_names(final) == set(final["last_optimizer_state"]["param_groups"][0]["param_names"])
    gained = len(final["last_optimizer_state"]["param_groups"][0]["param_names"]) - 4
    assert f"{gained} gain SAGE (their Ī starts at 0), 0 lose it" in log


def test_resume_with_changed_beta0_eps_and_betas(toy_data_bin, first_run, tmp_path):
    log, final = resume(toy_data_bin, first_run, tmp_path / "changed", "--sage-params", KEYS, "--sage-beta0", "0.3",
                        "--sage-eps", "1e-10", "--adam-betas", "(0.8, 0.99)")
    for change in ("sage_beta0 0.8 -> 0.3", "sage_eps 1e-12 -> 1e-10", "adam_betas (0.9, 0.98) -> (0.8, 0.99)"):
        assert f"fairseq-sage: resumed with {change} (the command line's value)" in log
    recorded = final["cfg"]["optimizer"]
    assert (recorded["sage_beta0"], recorded["sage_eps"], recorded["adam_betas"]) == (0.3, 1e-10, "(0.8, 0.99)")
    for group in final["last_optimizer_state"]["param_groups"]:  # what ran is what the record says
        assert (group["beta0"], group["sage_eps"], group["betas"]) == (0.3, 1e-10, (0.8, 0.99))


# --- NAdam-SAGE: fairseq's --optimizer nadam_sage, trained and resumed -------------------------------------


def nadam_train_args(data_bin, save_dir, *extra):
    """``train_args`` with ``--optimizer nadam_sage`` and its own flags instead of adam_sage's."""
    args = train_args(data_bin, save_dir, "--nadam-betas", "(0.9, 0.98)", "--momentum-decay", "0.1", *EXACT, *extra)
    at = args.index("--adam-betas")
    del args[at: at + 2]
    args[args.index("adam_sage")] = "nadam_sage"
    return args


def test_nadam_sage_flags_reach_the_optimizer_and_a_bad_one_is_one_line():
    optimizer = fairseq_optimizer(Attention().parameters(), "--optimizer", "nadam_sage", "--nadam-betas", "(0.8, 0.9)",
                                  "--nadam-eps", "1e-6", "--momentum-decay", "0.01", "--weight-decay", "0.1")
    assert type(optimizer.optimizer).__name__ == "NAdamSAGE"
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["momentum_decay"], group["weight_decay"], group["lr"]) == (
        (0.8, 0.9), 1e-6, 0.01, 0.1, 0.01)
    with pytest.raises(SystemExit, match=re.escape(
            "fairseq-sage: error: --momentum-decay must be >= 0, got -0.5; change the flag")):
        fairseq_optimizer(Attention().parameters(), "--optimizer", "nadam_sage", "--momentum-decay", "-0.5")


@pytest.fixture(scope="module")
def nadam_run(toy_data_bin, tmp_path_factory):
    """checkpoint_last.pt of 8 straight updates with nadam_sage."""
    save_dir = tmp_path_factory.mktemp("nadam")
    run_fairseq("train", *nadam_train_args(toy_data_bin, save_dir, "--max-update", "8"))
    return save_dir / "checkpoint_last.pt"


def test_nadam_sage_trains_and_its_checkpoint_holds_its_state(nadam_run):
    checkpoint = load_checkpoint(str(nadam_run))
    assert checkpoint["optimizer_history"][-1]["optimizer_name"] == "FairseqNAdamSAGE"
    assert checkpoint["cfg"]["optimizer"]["momentum_decay"] == 0.1
    state = checkpoint["last_optimizer_state"]
    assert state["param_groups"][0]["betas"] == (0.9, 0.98)
    mu_product = math.prod(0.9 * (1 - 0.5 * 0.96 ** (t * 0.1)) for t in range(1, 9))
    for entry in state["state"].values():
        assert entry["step"] == 8
        assert entry["mu_product"] == pytest.approx(mu_product, rel=1e-12)
        assert {"exp_avg", "exp_avg_sq", "sensitivity_ema"} <= set(entry)


def test_nadam_sage_resumes_from_its_checkpoint_bit_identically(toy_data_bin, nadam_run, tmp_path):
    run_fairseq("train", *nadam_train_args(toy_data_bin, tmp_path, "--max-update", "4"))
    proc = run_fairseq("train", *nadam_train_args(toy_data_bin, tmp_path, "--max-update", "8"))
    assert "Loaded checkpoint" in proc.stdout + proc.stderr
    straight, resumed = load_checkpoint(str(nadam_run)), load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name
    for index, entry in straight["last_optimizer_state"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed["last_optimizer_state"]["state"][index][key])), key
