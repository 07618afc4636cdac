"""Resuming ``--optimizer sage`` with another ``--sage-base`` than the checkpoint's run.

The optimizer state fairseq saves is the base's own (Adam's ``exp_avg_sq``, NAG's
``momentum_buffer``); another base would load it by position and fail at its first step with a
KeyError (``'exp_inf'`` for adam -> adamax, ``'dampening'`` for nag -> sgd). The state records its
base, and a run resumed with another one stops with one line naming ``--reset-optimizer``; in a
state written before the base was recorded, the mismatch is found by one step of the new base on a
copy of the saved state.
"""

import hashlib

import pytest
import torch

from conftest import run_fairseq
from fairseq_sage.checkpoints import load_checkpoint, save_atomic
from helpers import build_sage_optimizer, sage_train_args

FIRST = ("--max-update", "2", "--no-epoch-checkpoints")
RESUMED = ("--max-update", "4", "--no-epoch-checkpoints")


@pytest.fixture(scope="module")
def first_runs(toy_data_bin, tmp_path_factory):
    """Two updates with --sage-base adam and with nag: base name -> save dir."""
    runs = {}
    for base in ("adam", "nag"):
        runs[base] = tmp_path_factory.mktemp(f"sage_{base}")
        run_fairseq("train", *sage_train_args(toy_data_bin, runs[base], "--sage-base", base, *FIRST))
    return runs


def copied_run(source, target, recorded=True):
    """``source``'s checkpoint_last.pt in ``target``; without the base's record where ``recorded`` is False
    (as a checkpoint written before the base was recorded)."""
    checkpoint = load_checkpoint(str(source / "checkpoint_last.pt"))
    if not recorded:
        del checkpoint["last_optimizer_state"]["sage"]["base"]
    save_atomic(checkpoint, str(target / "checkpoint_last.pt"))
    return target / "checkpoint_last.pt"


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_checkpoint_records_its_base(first_runs):
    for base, save_dir in first_runs.items():
        assert load_checkpoint(str(save_dir / "checkpoint_last.pt"))["last_optimizer_state"]["sage"]["base"] == base


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "older-checkpoint"])
@pytest.mark.parametrize("saved, resumed", [("adam", "adamax"), ("nag", "sgd")])
def test_resuming_with_another_base_stops_with_one_line(first_runs, toy_data_bin, tmp_path, saved, resumed, recorded):
    checkpoint = copied_run(first_runs[saved], tmp_path, recorded)
    before = digest(checkpoint)
    proc = run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, "--sage-base", resumed, *RESUMED), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr.replace("KeyError '", "")
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    line = errors[0]
    assert line.startswith(f"fairseq-sage: error: resumed with --sage-base {resumed} but the checkpoint's optimizer state is ")
    assert "pass --reset-optimizer to start the optimizer afresh" in line
    if recorded:
        assert f"is {saved}'s" in line and line.endswith(f"(or resume with --sage-base {saved})")
    else:
        assert "is another base's" in line
    assert digest(checkpoint) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]


def test_reset_optimizer_resumes_with_the_new_base(first_runs, toy_data_bin, tmp_path):
    copied_run(first_runs["nag"], tmp_path)
    run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, "--sage-base", "sgd", "--reset-optimizer", *RESUMED))
    state = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    assert state["last_optimizer_state"]["sage"]["base"] == "sgd"
    assert state["extra_state"]["train_iterator"]["epoch"] >= 1 and state["optimizer_history"][-1]["num_updates"] == 4


def test_an_older_checkpoint_of_the_same_base_resumes(first_runs, toy_data_bin, tmp_path):
    copied_run(first_runs["adam"], tmp_path, recorded=False)
    run_fairseq("train", *sage_train_args(toy_data_bin, tmp_path, "--sage-base", "adam", *RESUMED))
    state = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 4
    entries = state["last_optimizer_state"]["state"].values()
    assert all(entry["step"] == 4 and entry["sage_step"] == 4 for entry in entries)


def saved_state_without_base(base, layer):
    """The state dict of --sage-base ``base`` after one update of ``layer``, its base's record removed."""

    optimizer = build_sage_optimizer(list(layer.parameters()), "--sage-base", base)
    layer(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    state_dict = optimizer.state_dict()
    del state_dict["sage"]["base"]
    return state_dict


@pytest.mark.parametrize("saved, resumed, error", [
    ("adam", "adamax", "KeyError 'exp_inf'"), ("adamax", "adam", "KeyError 'exp_avg_sq'"),
    ("nag", "sgd", "KeyError 'dampening'"), ("nag", "adafactor", "KeyError 'exp_avg_sq'"),
] + [(base, base, None) for base in ("adam", "adamax", "nag", "sgd", "adafactor", "adagrad")])
def test_the_probe_of_an_older_state_finds_another_bases_state_only(saved, resumed, error):
    """Probed on the smallest weight, the bias: Adafactor keeps an unfactored ``exp_avg_sq`` for it."""
    from fairseq_sage.fairseq.wrapper import foreign_state_error

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    state_dict = saved_state_without_base(saved, layer)
    optimizer = build_sage_optimizer(list(layer.parameters()), "--sage-base", resumed)
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    settings = {k: v for k, v in optimizer.optimizer_config.items() if k != "lr"}
    assert foreign_state_error(optimizer.optimizer.optimizer, optimizer.optimizer.param_groups, state_dict,
                               settings) == error
    assert all(torch.equal(p, before[name]) for name, p in layer.named_parameters())  # the probe steps a copy
