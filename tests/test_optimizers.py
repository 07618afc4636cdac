"""The torch optimizers against plain re-implementations of the equations, written here."""

import copy
import io
import math
import pickle
import re

import pytest
import torch

from fairseq_sage import AdamaxSAGE, AdamSAGE, LionSAGE, NAdamSAGE, SGDSAGE
from helpers import gradient_sequence, reference_multiplier, run_optimizer

SHAPES = [(7,), (5, 3), (2, 3, 4)]
STEPS = 25


def reference_run(kind, theta, grads, hp, sage=True):
    """Apply the base step (times the SAGE multiplier) for every gradient in ``grads``."""
    theta = theta.clone()
    m = torch.zeros_like(theta)
    second = torch.zeros_like(theta)
    ema = torch.zeros_like(theta)
    mu_product = 1.0
    for t, g in enumerate(grads, start=1):
        multiplier, ema = reference_multiplier(theta, g, ema, t, hp["beta0"], hp["sage_eps"])
        if not sage:
            multiplier = torch.ones_like(theta)
        if kind == "adam":
            b1, b2 = hp["betas"]
            m = b1 * m + (1 - b1) * g
            second = b2 * second + (1 - b2) * g * g
            size = hp["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t)
            update = size * m * multiplier / (second.sqrt() + hp["eps"])
        elif kind == "adamax":
            b1, b2 = hp["betas"]
            m = b1 * m + (1 - b1) * g
            second = torch.maximum(b2 * second, g.abs())
            update = hp["lr"] / (1 - b1**t) * m * multiplier / (second + hp["eps"])
        elif kind == "nadam":  # torch.optim.NAdam's equations, weight decay decoupled
            b1, b2 = hp["betas"]
            mu = b1 * (1 - 0.5 * 0.96 ** (t * hp["momentum_decay"]))
            mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * hp["momentum_decay"]))
            mu_product *= mu
            m = b1 * m + (1 - b1) * g
            second = b2 * second + (1 - b2) * g * g
            denominator = (second / (1 - b2**t)).sqrt() + hp["eps"]
            nesterov = (1 - mu) / (1 - mu_product) * g + mu_next / (1 - mu_product * mu_next) * m
            update = hp["lr"] * nesterov * multiplier / denominator
        elif kind == "lion":  # Chen et al. 2023: the sign of an interpolation, then the moving average
            b1, b2 = hp["betas"]
            update = hp["lr"] * torch.sign(b1 * m + (1 - b1) * g) * multiplier
            m = b2 * m + (1 - b2) * g
        else:
            m = hp["momentum"] * m + g
            update = hp["lr"] * m * multiplier
        theta = theta - hp["lr"] * hp["weight_decay"] * theta - update
    return theta


HYPER = {
    "adam": (AdamSAGE, dict(lr=3e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, beta0=0.8, sage_eps=1e-12)),
    "adamax": (AdamaxSAGE, dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, beta0=0.6, sage_eps=1e-12)),
    "sgd": (SGDSAGE, dict(lr=0.05, momentum=0.9, weight_decay=0.01, beta0=0.4, sage_eps=1e-12)),
    "lion": (LionSAGE, dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, beta0=0.8, sage_eps=1e-12)),
    "nadam": (NAdamSAGE, dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, momentum_decay=0.1,
                              beta0=0.8, sage_eps=1e-12)),
}


@pytest.mark.parametrize("kind", sorted(HYPER))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_with_groups(kind, dtype):
    cls, hp = HYPER[kind]
    torch.manual_seed(1)
    inits = [torch.randn(s, dtype=dtype) for s in SHAPES]
    inits[0][:3] = 0.0  # exact zeros, as fairseq's zero-initialised biases
    params = [torch.nn.Parameter(x.clone()) for x in inits]
    # group 0: defaults; group 1: its own lr and beta0; group 2: SAGE off
    group_hp = [dict(hp), dict(hp, lr=hp["lr"] / 2, beta0=0.9), dict(hp)]
    optimizer = cls(
        [{"params": [params[0]]}, {"params": [params[1]], "lr": group_hp[1]["lr"], "beta0": 0.9},
         {"params": [params[2]], "sage": False}],
        **hp,
    )
    grads = [gradient_sequence(s, dtype, seed=i) for i, s in enumerate(SHAPES)]
    run_optimizer(optimizer, params, grads)

    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for i, (p, x) in enumerate(zip(params, inits)):
        expected = reference_run(kind, x.double(), [g.double() for g in grads[i]], group_hp[i], sage=i != 2)
        assert p.dtype == dtype
        torch.testing.assert_close(p.detach().double(), expected, **tol)
        assert not torch.equal(p.detach(), x), "the weights did not move"
    assert "sensitivity_ema" in optimizer.state[params[0]]
    assert "sensitivity_ema" not in optimizer.state[params[2]], "a SAGE-off group keeps no Ī"
    assert optimizer.state[params[1]]["step"] == STEPS


STATE_KEYS = {"lion": ["step", "exp_avg"], "nadam": ["step", "exp_avg", "exp_avg_sq", "mu_product"]}


@pytest.mark.parametrize("impl", ["reference", "foreach", "cpp"])
@pytest.mark.parametrize("sage", [True, False], ids=["sage", "plain"])
@pytest.mark.parametrize("kind", sorted(STATE_KEYS))
def test_lion_and_nadam_sage_follow_the_equations_on_every_path(kind, impl, sage):
    """Lion-SAGE and NAdam-SAGE (and plain Lion and NAdam, SAGE off) on float32 tensors against
    the float64 equations."""
    cls, hp = HYPER[kind]
    hp = dict(hp, sage=sage)
    torch.manual_seed(2)
    inits = [torch.randn(s) for s in SHAPES]
    params = [torch.nn.Parameter(x.clone()) for x in inits]
    optimizer = cls(params, impl=impl, **hp)
    grads = [gradient_sequence(s, torch.float32, seed=10 + i) for i, s in enumerate(SHAPES)]
    run_optimizer(optimizer, params, grads)
    for p, x, g in zip(params, inits, grads):
        expected = reference_run(kind, x.double(), [v.double() for v in g], hp, sage=sage)
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)
        assert sorted(optimizer.state[p]) == sorted(STATE_KEYS[kind] + ["sensitivity_ema"] * sage)


@pytest.mark.parametrize("impl", ["reference", "foreach", "cpp"])
def test_lion_weight_decay_alone_shrinks_the_weights_geometrically(impl):
    """With g = 0 the sign is 0 and only the decoupled decay acts: θ_t = θ_0 · (1 − ηλ)^t."""
    theta = torch.randn(9)
    param = torch.nn.Parameter(theta.clone())
    optimizer = LionSAGE([param], lr=0.01, weight_decay=0.5, impl=impl)
    for _ in range(4):
        param.grad = torch.zeros_like(param)
        optimizer.step()
    torch.testing.assert_close(param.detach(), theta * (1 - 0.01 * 0.5) ** 4, rtol=1e-6, atol=0)


def test_lion_defaults_are_the_papers():
    group = LionSAGE([torch.nn.Parameter(torch.zeros(2))]).param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-4, (0.9, 0.99), 0.0)


@pytest.mark.parametrize("kind", sorted(HYPER))
def test_zero_weight_moves(kind):
    """A weight that is exactly 0 has I = 0; (0 + ε)/(0 + ε) = 1 lets it move (ε² below would freeze it)."""
    cls, hp = HYPER[kind]
    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = cls([param], **hp)
    param.grad = torch.tensor([1.0, -2.0, 0.5, 3.0])
    optimizer.step()
    assert torch.all(param.detach() != 0)
    assert torch.all(param.detach() * param.grad < 0), "the step goes against the gradient"


def test_first_step_multiplier_is_one_for_zero_weights_and_small_elsewhere():
    """At t = 1, Ī_c = I and U = 0: m = ε/(I + ε), tiny where I ≫ ε and 1 where I = 0."""
    param = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    optimizer = AdamSAGE([param], lr=1.0, weight_decay=0.0, sage_eps=1e-12)
    param.grad = torch.tensor([1.0, 1.0])
    optimizer.step()
    moved = -param.detach() + torch.tensor([0.0, 1.0])
    assert moved[0].item() == pytest.approx(1.0, rel=1e-6)  # Adam's first step is lr · sign(g)
    assert moved[1].item() == pytest.approx(1e-12, rel=1e-3)


@pytest.mark.parametrize("beta0", [0.6, 0.8, 0.9])
def test_a_sensitivity_spike_raises_the_multiplier_to_at_most_beta0_over_one_minus_beta0(beta0):
    """With Ī settled at a and a jump to I ≫ a: U = β0·(I − a), Ī = β0·a + (1 − β0)·I, so
    U/Ī → β0/(1 − β0) from below (docs/results.md explains the grid's divergent runs by it)."""
    from fairseq_sage.optim.functional import sage_multiplier_

    ema = torch.zeros(3, dtype=torch.float64)
    param = torch.ones(3, dtype=torch.float64)
    for step in range(1, 201):  # bias correction has faded: 1 - beta0**200 == 1
        sage_multiplier_(ema, param, torch.full((3,), 1e-3, dtype=torch.float64), beta0, step, 1e-12)
    spike = torch.tensor([1e-2, 1.0, 1e3], dtype=torch.float64)
    multiplier = sage_multiplier_(ema, param, spike, beta0, 201, 1e-12)
    bound = beta0 / (1 - beta0)
    expected = beta0 * (spike - 1e-3) / (beta0 * 1e-3 + (1 - beta0) * spike)
    torch.testing.assert_close(multiplier, expected, rtol=1e-9, atol=0)
    assert torch.all(multiplier < bound) and multiplier[-1].item() == pytest.approx(bound, rel=1e-4)


def fairseq_reference_classes():
    fairseq_optim = pytest.importorskip("fairseq.optim.adam")
    from fairseq.optim.adamax import Adamax

    return fairseq_optim.Adam, Adamax


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sage_off_is_fairseq_adam_bit_for_bit(dtype):
    FairseqAdam, _ = fairseq_reference_classes()
    torch.manual_seed(0)
    inits = [torch.randn(s).to(dtype) for s in SHAPES]
    ours = [torch.nn.Parameter(x.clone()) for x in inits]
    theirs = [torch.nn.Parameter(x.clone()) for x in inits]
    hp = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=1e-4)
    sage_off = AdamSAGE(ours, sage=False, impl="reference", **hp)
    reference = FairseqAdam(theirs, **hp)
    grads = [gradient_sequence(s, dtype, seed=i) for i, s in enumerate(SHAPES)]
    run_optimizer(sage_off, ours, grads)
    run_optimizer(reference, theirs, grads)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sage_off.state[a][key], reference.state[b][key])


def test_sage_off_is_fairseq_adamax_bit_for_bit():
    _, FairseqAdamax = fairseq_reference_classes()
    torch.manual_seed(0)
    inits = [torch.randn(s) for s in SHAPES]
    ours = [torch.nn.Parameter(x.clone()) for x in inits]
    theirs = [torch.nn.Parameter(x.clone()) for x in inits]
    hp = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
    grads = [gradient_sequence(s, torch.float32, seed=i) for i, s in enumerate(SHAPES)]
    run_optimizer(AdamaxSAGE(ours, sage=False, impl="reference", **hp), ours, grads)
    run_optimizer(FairseqAdamax(theirs, bias_correction=True, **hp), theirs, grads)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["reference", "foreach", "cpp"])
def test_sage_off_is_torch_nadam_with_decoupled_weight_decay(impl):
    """NAdamSAGE with SAGE off is torch.optim.NAdam(decoupled_weight_decay=True), to float32 rounding
    (torch adds the g and m terms in two steps, and keeps Π μ_i in float32)."""
    torch.manual_seed(0)
    inits = [torch.randn(s) for s in SHAPES]
    ours = [torch.nn.Parameter(x.clone()) for x in inits]
    theirs = [torch.nn.Parameter(x.clone()) for x in inits]
    hp = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1, momentum_decay=0.1)
    grads = [gradient_sequence(s, torch.float32, seed=i) for i, s in enumerate(SHAPES)]
    optimizer = NAdamSAGE(ours, sage=False, impl=impl, **hp)
    run_optimizer(optimizer, ours, grads)
    run_optimizer(torch.optim.NAdam(theirs, decoupled_weight_decay=True, foreach=False, **hp), theirs, grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert optimizer.state[a]["mu_product"] == pytest.approx(math.prod(
            0.9 * (1 - 0.5 * 0.96 ** (t * 0.1)) for t in range(1, STEPS + 1)), rel=1e-12)


def test_nadam_sage_takes_torchs_arguments_in_order_and_defaults():
    param = torch.nn.Parameter(torch.zeros(2))
    group = NAdamSAGE([param], 1e-3, (0.8, 0.9), 1e-6, 0.01, 2e-3, 0.5, 1e-10).param_groups[0]
    assert [group[k] for k in ("lr", "betas", "eps", "weight_decay", "momentum_decay", "beta0", "sage_eps")] == [
        1e-3, (0.8, 0.9), 1e-6, 0.01, 2e-3, 0.5, 1e-10]
    defaults = NAdamSAGE([param]).param_groups[0]
    assert (defaults["lr"], defaults["betas"], defaults["eps"], defaults["momentum_decay"]) == (2e-3, (0.9, 0.999),
                                                                                              1e-8, 4e-3)
    with pytest.raises(ValueError, match=re.escape("momentum_decay must be >= 0, got -1")):
        NAdamSAGE([param], momentum_decay=-1)
    with pytest.raises(TypeError, match="momentum"):
        NAdamSAGE([param], momentum=0.9)


def test_sage_off_is_torch_sgd_bit_for_bit():
    torch.manual_seed(0)
    inits = [torch.randn(s) for s in SHAPES]
    ours = [torch.nn.Parameter(x.clone()) for x in inits]
    theirs = [torch.nn.Parameter(x.clone()) for x in inits]
    grads = [gradient_sequence(s, torch.float32, seed=i) for i, s in enumerate(SHAPES)]
    run_optimizer(SGDSAGE(ours, lr=0.05, momentum=0.9, sage=False, impl="reference"), ours, grads)
    run_optimizer(torch.optim.SGD(theirs, lr=0.05, momentum=0.9, foreach=False), theirs, grads)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", sorted(HYPER))
def test_state_dict_round_trip_continues_bit_identically(kind):
    cls, hp = HYPER[kind]
    torch.manual_seed(3)
    inits = [torch.randn(s) for s in SHAPES]
    grads = [gradient_sequence(s, torch.float32, steps=20, seed=i) for i, s in enumerate(SHAPES)]
    first_half = [g[:10] for g in grads]
    second_half = [g[10:] for g in grads]

    straight = [torch.nn.Parameter(x.clone()) for x in inits]
    run_optimizer(cls(straight, **hp), straight, grads)

    params = [torch.nn.Parameter(x.clone()) for x in inits]
    optimizer = cls(params, **hp)
    run_optimizer(optimizer, params, first_half)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optim": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    new_optimizer = cls(resumed, **hp)
    new_optimizer.load_state_dict(saved["optim"])
    assert new_optimizer.state[resumed[0]]["step"] == 10
    run_optimizer(new_optimizer, resumed, second_half)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_half_precision_parameters_use_float32_state():
    param = torch.nn.Parameter(torch.randn(6).to(torch.bfloat16))
    reference = torch.nn.Parameter(param.detach().float().clone())
    ours, theirs = AdamSAGE([param], lr=1e-2), AdamSAGE([reference], lr=1e-2)
    for g in gradient_sequence((6,), torch.float32, steps=5):
        param.grad, reference.grad = g.to(torch.bfloat16), g.to(torch.bfloat16).float()
        ours.step()
        theirs.step()
        reference.data.copy_(reference.data.to(torch.bfloat16).float())
    assert param.dtype == torch.bfloat16
    assert ours.state[param]["sensitivity_ema"].dtype == torch.float32
    torch.testing.assert_close(param.detach().float(), reference.detach(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta0=1.0), "beta0 must be in [0, 1)"),
        (dict(beta0=-0.1), "beta0 must be in [0, 1)"),
        (dict(lr=-1e-3), "lr must be >= 0"),
        (dict(eps=-1.0), "eps must be >= 0"),
        (dict(sage_eps=-1e-8), "sage_eps must be > 0"),
        (dict(sage_eps=0.0), "sage_eps must be > 0"),  # (0 + 0)/(0 + 0) for a zero weight
        (dict(betas=(0.9, 1.0)), "betas must be in [0, 1)"),
        (dict(betas=(0.9,)), "betas must be a pair (beta1, beta2), got (0.9,)"),
        (dict(betas=0.9), "betas must be a pair (beta1, beta2), got 0.9"),
        (dict(lr="1e-3"), "lr must be a number, got '1e-3'"),
    ],
)
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AdamSAGE([torch.nn.Parameter(torch.zeros(2))], **kwargs)


NON_FINITE = [float("inf"), -float("inf"), float("nan")]


@pytest.mark.parametrize("bad", NON_FINITE, ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("kind, key", [
    ("adam", "lr"), ("adam", "eps"), ("adam", "weight_decay"), ("adam", "beta0"), ("adam", "sage_eps"),
    ("adam", "betas"), ("adamax", "eps"), ("adamax", "betas"), ("sgd", "momentum"), ("sgd", "lr"),
])
def test_non_finite_hyperparameters_are_refused(kind, key, bad):
    cls, hp = HYPER[kind]
    value = (0.9, bad) if key == "betas" else bad
    with pytest.raises(ValueError, match=rf"^{key} must be (finite, got|in \[0, 1\)|>= 0|> 0)"):
        cls([torch.nn.Parameter(torch.zeros(2))], **dict(hp, **{key: value}))


def test_invalid_hyperparameter_in_a_later_group():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = SGDSAGE([param], lr=0.1)
    rejected = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="momentum"):
        optimizer.add_param_group({"params": [rejected], "momentum": 1.5})
    assert len(optimizer.param_groups) == 1, "the refused group is not kept"
    param.grad, rejected.grad = torch.ones(2), torch.ones(2)
    optimizer.step()
    assert torch.equal(rejected.detach(), torch.ones(2)) and rejected not in optimizer.state


def test_complex_parameters_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=re.escape("AdamSAGE does not support complex parameters (got one of dtype "
                                                   "torch.complex64); optimize torch.view_as_real(param) instead")):
        AdamSAGE([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))])


def test_a_sparse_gradient_changes_nothing():
    dense, sparse = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = AdamSAGE([dense, sparse], lr=0.1)
    dense.grad, sparse.grad = torch.ones(3), torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="AdamSAGE does not support sparse gradients"):
        optimizer.step()
    assert not optimizer.state, "no step count advanced, no state created"
    assert torch.equal(dense.detach(), torch.ones(3))


def round_trips():
    def saved_and_loaded(optimizer):
        buffer = io.BytesIO()
        torch.save(optimizer, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)

    return {"deepcopy": copy.deepcopy, "pickle": lambda o: pickle.loads(pickle.dumps(o)),
            "torch.save": saved_and_loaded}


@pytest.mark.parametrize("how", sorted(round_trips()))
@pytest.mark.parametrize("kind", sorted(HYPER))
def test_a_copied_optimizer_continues_as_the_original(kind, how):
    """The copy holds the state and every setting, also those outside ``defaults`` (impl, check_finite)."""
    cls, hp = HYPER[kind]
    torch.manual_seed(4)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    optimizer = cls(params, **hp, impl="foreach", check_finite=False)
    grads = [gradient_sequence(s, torch.float32, steps=6, seed=i) for i, s in enumerate(SHAPES)]
    run_optimizer(optimizer, params, [g[:3] for g in grads])
    copied = round_trips()[how](optimizer)
    copied_params = [p for group in copied.param_groups for p in group["params"]]
    assert copied.impl == "foreach" and copied.check_finite is False
    assert copied.state[copied_params[0]]["step"] == 3
    run_optimizer(optimizer, params, [g[3:] for g in grads])
    run_optimizer(copied, copied_params, [g[3:] for g in grads])
    for a, b in zip(params, copied_params):
        assert torch.equal(a, b)


def test_named_parameters_are_recorded_and_state_follows_its_name_into_other_groups():
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    optimizer = AdamSAGE(model.named_parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    saved = optimizer.state_dict()
    assert saved["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    named = dict(model.named_parameters())
    regrouped = AdamSAGE([{"params": [("1.weight", named["1.weight"]), ("1.bias", named["1.bias"])], "sage": False},
                          {"params": [("0.weight", named["0.weight"]), ("0.bias", named["0.bias"])]}], lr=1e-2)
    regrouped.load_state_dict(saved)
    for name, param in named.items():
        original = optimizer.state[param]
        assert torch.equal(regrouped.state[param]["exp_avg"], original["exp_avg"]), name
        assert ("sensitivity_ema" in regrouped.state[param]) == name.startswith("0."), name
    assert regrouped.param_groups[0]["sage"] is False  # each group keeps its own settings
    with pytest.raises(ValueError, match=r"the saved optimizer state is for other parameters \(it has no 2\.weight"):
        AdamSAGE([("2.weight", named["0.weight"])]).load_state_dict(saved)


def test_closure_is_called_and_its_loss_returned():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = AdamSAGE([param])

    def closure():
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == pytest.approx(3.0)
    assert param.grad is not None

