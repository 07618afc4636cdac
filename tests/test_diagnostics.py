"""SAGE diagnostics: statistics against the update the optimizer then takes, and in fairseq-train logs."""

import copy
import math
import re

import pytest
import torch
from fairseq.logging import metrics
from omegaconf import OmegaConf

from conftest import run_fairseq, train_args
from fairseq_sage import AdamSAGE, SGDSAGE
from fairseq_sage.checkpoints import load_checkpoint
from fairseq_sage.optim.diagnostics import next_update_number, sage_statistics
from fairseq_sage.fairseq.optimizers import ADAPTERS

KEYS = [
    "sage_mult_mean", "sage_mult_p10", "sage_mult_p50", "sage_mult_p90",
    "sage_mult_frac_above_1", "sage_sensitivity_mean", "sage_variation_mean",
]
BETA0 = 0.6


def random_tensors(shapes, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


def set_grads(params, seed):
    for p, g in zip(params, random_tensors([p.shape for p in params], seed)):
        p.grad = g


def sgd_with_history(steps=3):
    """Plain SGD-SAGE (lr 1, no momentum, no decay) on two SAGE tensors and one non-SAGE tensor,
    after ``steps`` updates, with fresh gradients set for the next one."""
    sage_params = [p.requires_grad_() for p in random_tensors([(6, 5), (7,)], seed=1)]
    plain_param = random_tensors([(4,)], seed=2)[0].requires_grad_()
    optimizer = SGDSAGE(
        [{"params": sage_params}, {"params": [plain_param], "sage": False}], lr=1.0, beta0=BETA0
    )
    for seed in range(steps):
        set_grads(sage_params + [plain_param], seed=10 + seed)
        optimizer.step()
    set_grads(sage_params + [plain_param], seed=99)
    return optimizer, sage_params


def test_statistics_describe_the_next_update():
    optimizer, params = sgd_with_history(steps=3)
    stats = sage_statistics(optimizer.param_groups, optimizer.state)

    before = [p.detach().clone() for p in params]
    optimizer.step()
    # with lr 1 and no momentum, SGD-SAGE moves each weight by m * g
    applied = torch.cat([((b - p.detach()) / p.grad).flatten() for b, p in zip(before, params)])
    t = 4
    corrected = torch.cat(
        [(optimizer.state[p]["sensitivity_ema"] / (1 - BETA0**t)).flatten() for p in params]
    )
    sensitivity = torch.cat([(b * p.grad).abs().flatten() for b, p in zip(before, params)])

    assert set(stats) == set(KEYS)
    assert stats["sage_mult_mean"] == pytest.approx(applied.mean().item(), rel=1e-9)
    for name, q in [("p10", 0.1), ("p50", 0.5), ("p90", 0.9)]:
        assert stats[f"sage_mult_{name}"] == pytest.approx(torch.quantile(applied, q).item(), rel=1e-9)
    assert stats["sage_mult_frac_above_1"] == (applied > 1).sum().item() / applied.numel()
    assert 0 < stats["sage_mult_frac_above_1"] < 1
    assert stats["sage_sensitivity_mean"] == pytest.approx(corrected.mean().item(), rel=1e-12)
    assert stats["sage_variation_mean"] == pytest.approx(
        (sensitivity - corrected).abs().mean().item(), rel=1e-12
    )


@pytest.mark.parametrize("sample_size", [100_000, 10])
def test_statistics_change_neither_state_nor_torch_random_numbers(sample_size):
    optimizer, _ = sgd_with_history(steps=2)
    state_before = copy.deepcopy(optimizer.state_dict())
    rng_before = torch.get_rng_state()
    sage_statistics(optimizer.param_groups, optimizer.state, sample_size=sample_size)
    assert torch.equal(torch.get_rng_state(), rng_before)
    state_after = optimizer.state_dict()
    for key, param_state in state_before["state"].items():
        assert param_state["step"] == state_after["state"][key]["step"] == 2
        for name, value in param_state.items():
            if torch.is_tensor(value):
                assert torch.equal(value, state_after["state"][key][name])


def test_sampled_quantiles_are_close_and_repeatable_means_exact():
    optimizer, _ = sgd_with_history(steps=5)
    exact = sage_statistics(optimizer.param_groups, optimizer.state)
    sampled = sage_statistics(optimizer.param_groups, optimizer.state, sample_size=20)
    assert sampled == sage_statistics(optimizer.param_groups, optimizer.state, sample_size=20)
    for key in ("sage_mult_mean", "sage_mult_frac_above_1", "sage_sensitivity_mean", "sage_variation_mean"):
        assert sampled[key] == exact[key]
    assert sampled["sage_mult_p50"] != exact["sage_mult_p50"]  # a sample, not all 37 elements
    assert exact["sage_mult_p10"] <= exact["sage_mult_p50"] <= exact["sage_mult_p90"]


def test_first_update_gives_zero_weights_multiplier_one_and_the_others_almost_zero():
    weights = torch.tensor([0.0, 0.0, 0.5, -2.0, 1.0], dtype=torch.float64).requires_grad_()
    no_grad = torch.ones(3).requires_grad_()
    optimizer = AdamSAGE([weights, no_grad])
    weights.grad = torch.tensor([1.0, -1.0, 0.3, 0.1, -0.2], dtype=torch.float64)
    stats = sage_statistics(optimizer.param_groups, optimizer.state)
    # step 1: Ī_c = I and U = 0 (up to rounding), so m = ε/(I + ε): 1 where θ·g = 0, ~1e-11 elsewhere
    assert stats["sage_mult_mean"] == pytest.approx(2 / 5, rel=1e-6)
    assert stats["sage_mult_frac_above_1"] == 0.0
    assert stats["sage_mult_p10"] < 1e-10 and stats["sage_mult_p90"] == pytest.approx(1.0)
    assert stats["sage_sensitivity_mean"] == pytest.approx((0.15 + 0.2 + 0.2) / 5)
    assert stats["sage_variation_mean"] < 1e-16
    assert not optimizer.state


def test_no_sage_parameter_with_a_gradient_gives_no_statistics():
    optimizer, params = sgd_with_history(steps=1)
    for p in params:
        p.grad = None
    assert sage_statistics(optimizer.param_groups, optimizer.state) == {}


def test_next_update_number():
    optimizer, _ = sgd_with_history(steps=3)
    assert next_update_number(optimizer.param_groups, optimizer.state) == 4
    fresh = SGDSAGE([torch.zeros(2, requires_grad=True)], lr=0.1)
    assert next_update_number(fresh.param_groups, fresh.state) == 1


def fairseq_adam_sage(params, log_interval, no_sage_diagnostics=False):
    adapter = ADAPTERS["adam_sage"]
    cfg = OmegaConf.structured(adapter.config_class(
        lr=[1e-3], log_interval=log_interval, update_epoch_batch_itr=True,
        no_sage_diagnostics=no_sage_diagnostics,
    ))
    return adapter(cfg, params)


def logged_sage_values(optimizer, params, grads, scale):
    """Step ``optimizer`` once per gradient (times ``scale``); the sage_* values each step logged."""
    logged = []
    for grad in grads:
        for p, g in zip(params, grad):
            p.grad = g * scale
        with metrics.aggregate(new_root=True) as aggregator:
            optimizer.step(scale=scale)
        logged.append({k: v for k, v in aggregator.get_smoothed_values().items() if k.startswith("sage_")})
    return logged


def test_adapter_logs_every_log_interval_updates_on_unscaled_gradients():
    params = [p.requires_grad_() for p in random_tensors([(5, 4), (4,)], seed=3)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    grads = [random_tensors([p.shape for p in params], seed=20 + i) for i in range(4)]
    optimizer = fairseq_adam_sage(params, log_interval=2)
    logged = logged_sage_values(optimizer, params, grads, scale=8.0)

    reference = AdamSAGE(twins, lr=1e-3)
    for i, grad in enumerate(grads):
        for p, g in zip(twins, grad):
            p.grad = g
        if i % 2 == 0:
            assert logged[i] == {}
        else:
            expected = sage_statistics(reference.param_groups, reference.state)
            assert logged[i] == pytest.approx(expected, rel=1e-12)
        reference.step()
    for p, twin in zip(params, twins):
        assert torch.equal(p, twin)


def test_adapter_logs_nothing_when_switched_off_or_without_interval():
    params = [torch.ones(3, requires_grad=True)]
    grads = [[torch.full((3,), 0.5)]] * 2
    for optimizer in (
        fairseq_adam_sage(params, log_interval=1, no_sage_diagnostics=True),
        fairseq_adam_sage(params, log_interval=None),
        fairseq_adam_sage(params, log_interval=0),
    ):
        assert logged_sage_values(optimizer, params, grads, scale=1.0) == [{}, {}]


TRAIN_INNER = re.compile(r"\| train_inner \| .*num_updates=(\d+),.*")
STAT = re.compile(r"(sage_\w+)=([^,\s]+)")


def sage_log(proc):
    """{num_updates: {sage key: value}} of the train_inner lines of a fairseq-train run."""
    lines = {}
    for match in TRAIN_INNER.finditer(proc.stdout + proc.stderr):
        lines[int(match.group(1))] = {k: float(v) for k, v in STAT.findall(match.group(0))}
    return lines


@pytest.fixture(scope="module")
def runs_with_and_without_diagnostics(toy_data_bin, tmp_path_factory):
    runs = {}
    for name, extra in (("on", []), ("off", ["--no-sage-diagnostics"])):
        save_dir = tmp_path_factory.mktemp(f"diagnostics_{name}")
        proc = run_fairseq("train", *train_args(
            toy_data_bin, save_dir, "--max-update", "8", "--log-interval", "2",
            "--no-epoch-checkpoints", "--dropout", "0.1", *extra,
        ))
        runs[name] = (sage_log(proc), save_dir / "checkpoint_last.pt")
    return runs


def test_train_inner_lines_carry_sane_sage_statistics(runs_with_and_without_diagnostics):
    log, _ = runs_with_and_without_diagnostics["on"]
    assert sorted(log) == [2, 4, 6, 8]
    for stats in log.values():
        assert sorted(stats) == sorted(KEYS)
        assert all(math.isfinite(v) for v in stats.values())
        assert 0 < stats["sage_mult_p10"] <= stats["sage_mult_p50"] <= stats["sage_mult_p90"]
        assert 0 <= stats["sage_mult_frac_above_1"] <= 1
        assert stats["sage_sensitivity_mean"] > 0 and stats["sage_variation_mean"] > 0


def test_no_sage_diagnostics_flag_removes_them(runs_with_and_without_diagnostics):
    log, _ = runs_with_and_without_diagnostics["off"]
    assert sorted(log) == [2, 4, 6, 8]
    assert all(stats == {} for stats in log.values())


def test_diagnostics_leave_training_bit_identical(runs_with_and_without_diagnostics):
    with_stats = load_checkpoint(str(runs_with_and_without_diagnostics["on"][1]))
    without = load_checkpoint(str(runs_with_and_without_diagnostics["off"][1]))
    assert with_stats["model"].keys() == without["model"].keys()
    for key, tensor in with_stats["model"].items():
        assert torch.equal(tensor, without["model"][key]), key
    states = with_stats["last_optimizer_state"]["state"], without["last_optimizer_state"]["state"]
    assert states[0].keys() == states[1].keys()
    for key, param_state in states[0].items():
        assert param_state["step"] == states[1][key]["step"] == 8
        for name in ("exp_avg", "exp_avg_sq", "sensitivity_ema"):
            assert torch.equal(param_state[name], states[1][key][name])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_are_summarised_in_float32(dtype):
    optimizer, params = sgd_with_history(steps=3)
    for p in params:
        p.data = p.data.to(dtype)
        p.grad = p.grad.to(dtype)
    half = sage_statistics(optimizer.param_groups, optimizer.state)
    for p in params:
        p.data = p.data.float()
        p.grad = p.grad.float()
    for param_state in optimizer.state.values():
        if "sensitivity_ema" in param_state:
            param_state["sensitivity_ema"] = param_state["sensitivity_ema"].float()
    assert half == sage_statistics(optimizer.param_groups, optimizer.state)
