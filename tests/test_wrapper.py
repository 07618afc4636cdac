"""SAGE(optimizer) against AdamSAGE and against Adafactor / NAdam re-implemented here from their equations."""

import copy
import io
import math
import pickle

import pytest
import torch

from fairseq_sage import SAGE, AdamSAGE
from helpers import gradient_sequence, reference_multiplier, run_optimizer

SHAPES = [(6, 4), (5,), (3, 2, 4)]
STEPS = 12
IMPLS = pytest.mark.parametrize("impl", ["foreach", "cpp"])


def make_params(shapes=SHAPES, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64).to(dtype)) for s in shapes]


def twin(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def gradients(shapes=SHAPES, dtype=torch.float32, steps=STEPS):
    return [gradient_sequence(s, dtype, steps, seed=i) for i, s in enumerate(shapes)]


@IMPLS
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_sage_over_torch_adam_equals_adam_sage(decay, impl):
    """With eps = 0 torch's θ − η/(1−β1^t)·m/(√v/√(1−β2^t) + eps) is AdamSAGE's
    θ − η√(1−β2^t)/(1−β1^t)·m/(√v + eps); the second group gets no SAGE in both."""
    params = make_params()
    others = twin(params)
    grads = gradients()
    hyper = dict(lr=3e-2, betas=(0.9, 0.98), eps=0.0, weight_decay=decay)
    base = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:], "lr": 1e-2}], **hyper)
    wrapper = SAGE(base, beta0=0.7, params=params[:2], impl=impl)
    reference = AdamSAGE([{"params": others[:2]}, {"params": others[2:], "lr": 1e-2, "sage": False}],
                         beta0=0.7, impl="reference", **hyper)
    run_optimizer(wrapper, params, grads)
    run_optimizer(reference, others, grads)
    for p, q in zip(params, others):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    for p, q in zip(params[:2], others[:2]):
        assert wrapper.state[p]["step"] == STEPS
        torch.testing.assert_close(wrapper.state[p]["sensitivity_ema"], reference.state[q]["sensitivity_ema"])
    assert params[2] not in wrapper.state


@IMPLS
def test_large_and_non_contiguous_tensors_are_modulated_like_the_rest(impl):
    """foreach cuts tensors above multi_tensor.CHUNK_ELEMENTS into flat slices and runs foreach
    ops over batches of them, taking a transposed (non-contiguous) weight whole; cpp takes the
    contiguous ones whole and leaves the transposed one to foreach. Each must end where AdamSAGE's
    reference path (one tensor at a time) puts it."""
    from fairseq_sage.optim.multi_tensor import CHUNK_ELEMENTS

    generator = torch.Generator().manual_seed(3)
    large = torch.randn(CHUNK_ELEMENTS * 2 + 1000, generator=generator)
    transposed = torch.randn(700, 400, generator=generator).t()
    params = [torch.nn.Parameter(large.view(-1, 8)), torch.nn.Parameter(transposed),
              torch.nn.Parameter(torch.randn(5, generator=generator))]
    assert not params[1].is_contiguous() and params[1].numel() > CHUNK_ELEMENTS
    others = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = [gradient_sequence(p.shape, torch.float32, 3, seed=i) for i, p in enumerate(params)]
    hyper = dict(lr=3e-2, betas=(0.9, 0.98), eps=0.0, weight_decay=0.1)
    wrapper = SAGE(torch.optim.AdamW(params, **hyper), beta0=0.7, impl=impl)
    run_optimizer(wrapper, params, grads)
    run_optimizer(AdamSAGE(others, beta0=0.7, impl="reference", **hyper), others, grads)
    for p, q in zip(params, others):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
        assert wrapper.state[p]["step"] == 3


def test_parameters_without_sage_get_the_plain_base_update_bit_for_bit():
    params = make_params()
    plain = twin(params)
    grads = gradients()
    run_optimizer(SAGE(torch.optim.Adam(params, lr=1e-2), params=params[:1]), params, grads)
    run_optimizer(torch.optim.Adam(plain, lr=1e-2), plain, grads)
    assert not torch.equal(params[0], plain[0])
    for p, q in zip(params[1:], plain[1:]):
        assert torch.equal(p, q)


def rms(x):
    return x.pow(2).mean().sqrt()


def adafactor_sage_reference(theta, grads, lr, decay, beta0, clip=1.0, beta2_decay=-0.8, eps2=1e-3):
    """Adafactor (Shazeer & Stern, 2018, as torch.optim.Adafactor states it) with SAGE.

    ρ = min(lr, 1/√t), α = max(ε2, RMS(θ))·ρ, β̂2 = 1 − t^c; matrices: R ← β̂2 R + (1−β̂2) mean_j G²,
    C ← β̂2 C + (1−β̂2) mean_i G², V = R Cᵀ / mean(R); vectors: V ← β̂2 V + (1−β̂2) G²;
    U = G / √max(V, ε1²), Û = U / max(1, RMS(U)/d); θ ← θ(1 − lr·λ) − α · m ⊙ Û.
    """
    eps1 = torch.finfo(torch.float32).eps
    theta = theta.double().clone()
    ema = torch.zeros_like(theta)
    row = col = var = None
    for t, g in enumerate(grads, start=1):
        g = g.double()
        multiplier, ema = reference_multiplier(theta, g, ema, t, beta0, 1e-12)
        one_minus_beta2 = t**beta2_decay
        alpha = max(eps2, rms(theta).item()) * min(lr, 1 / math.sqrt(t))
        if g.dim() > 1:
            row_mean, col_mean = (g * g).mean(-1, keepdim=True), (g * g).mean(-2, keepdim=True)
            row = row_mean * one_minus_beta2 if row is None else (1 - one_minus_beta2) * row + one_minus_beta2 * row_mean
            col = col_mean * one_minus_beta2 if col is None else (1 - one_minus_beta2) * col + one_minus_beta2 * col_mean
            v = row @ col / row.mean(-2, keepdim=True).clamp(min=eps1)
        else:
            var = g * g * one_minus_beta2 if var is None else (1 - one_minus_beta2) * var + one_minus_beta2 * g * g
            v = var
        update = g / v.clamp(min=eps1 * eps1).sqrt()
        update = update / max(1.0, rms(update).item() / clip)
        theta = theta * (1 - lr * decay) - alpha * multiplier * update
    return theta


@IMPLS
def test_adafactor_sage_matches_its_equations(impl):
    shapes = [(6, 4), (5,)]
    params = make_params(shapes)
    start = [p.detach().clone() for p in params]
    grads = gradients(shapes)
    run_optimizer(SAGE(torch.optim.Adafactor(params, lr=2e-2, weight_decay=0.5), beta0=0.8, impl=impl), params, grads)
    for p, theta, g in zip(params, start, grads):
        expected = adafactor_sage_reference(theta, g, lr=2e-2, decay=0.5, beta0=0.8)
        torch.testing.assert_close(p.double(), expected, rtol=1e-5, atol=1e-6)


def nadam_sage_reference(theta, grads, lr, decay, decoupled, beta0, betas=(0.9, 0.999), eps=1e-8, psi=4e-3):
    """NAdam (Dozat, 2016, as torch.optim.NAdam states it) with SAGE.

    μ_t = β1(1 − ½·0.96^{tψ}); m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²; v̂ = v/(1−β2^t);
    θ ← θ − m_SAGE ⊙ [η(1−μ_t)/(1−Π_{i≤t} μ_i)·g + η μ_{t+1}/(1−Π_{i≤t+1} μ_i)·m] / (√v̂ + ε);
    decoupled decay θ ← θ(1 − ηλ) first, unmodulated; coupled decay g ← g + λθ (modulated with the
    update), while the sensitivity uses the loss gradient.
    """
    b1, b2 = betas
    theta = theta.double().clone()
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    ema = torch.zeros_like(theta)
    mu_product = 1.0
    for t, g in enumerate(grads, start=1):
        g = g.double()
        multiplier, ema = reference_multiplier(theta, g, ema, t, beta0, 1e-12)
        decayed = theta * (1 - lr * decay) if decoupled else theta
        if not decoupled:
            g = g + decay * theta
        mu, mu_next = (b1 * (1 - 0.5 * 0.96 ** (k * psi)) for k in (t, t + 1))
        mu_product *= mu
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = (v / (1 - b2**t)).sqrt() + eps
        update = lr * (1 - mu) / (1 - mu_product) * g + lr * mu_next / (1 - mu_product * mu_next) * m
        theta = decayed - multiplier * update / denom
    return theta


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled-decay", "coupled-l2"])
def test_nadam_sage_matches_its_equations(decoupled):
    params = make_params()
    start = [p.detach().clone() for p in params]
    grads = gradients()
    base = torch.optim.NAdam(params, lr=1e-2, weight_decay=0.3, decoupled_weight_decay=decoupled)
    run_optimizer(SAGE(base, beta0=0.6), params, grads)
    for p, theta, g in zip(params, start, grads):
        expected = nadam_sage_reference(theta, g, lr=1e-2, decay=0.3, decoupled=decoupled, beta0=0.6)
        torch.testing.assert_close(p.double(), expected, rtol=1e-5, atol=1e-6)


class ShrinkingSGD(torch.optim.Optimizer):
    """An optimizer SAGE has no decay rule for."""

    def __init__(self, params, lr=0.1, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.data.mul_(1 - group["weight_decay"]).add_(p.grad, alpha=-group["lr"])


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda p: SAGE(ShrinkingSGD(p, weight_decay=0.1)), "does not know whether ShrinkingSGD decays weights"),
        (lambda p: SAGE(torch.optim.LBFGS(p)), "LBFGS: it evaluates the closure several times per step"),
        (lambda p: SAGE(AdamSAGE(p)), "AdamSAGE already applies SAGE"),
        (lambda p: SAGE(torch.optim.Adam(p), beta0=1.0), r"beta0 must be in \[0, 1\)"),
        (lambda p: SAGE(torch.optim.Adam(p), beta0=float("nan")), "beta0 must be finite"),
        (lambda p: SAGE(torch.optim.Adam(p), sage_eps=-1.0), "sage_eps must be > 0"),
        (lambda p: SAGE(torch.optim.Adam(p), sage_eps=float("inf")), "sage_eps must be finite"),
        (lambda p: SAGE(torch.optim.Adam(p[:1]), params=p[1:]), "selection of the wrapped optimizer's parameters"),
    ],
)
def test_what_cannot_work_is_refused_with_one_clear_error(build, message):
    with pytest.raises(ValueError, match=message):
        build(make_params())


def test_an_optimizer_without_a_rule_runs_when_it_does_not_decay():
    params = make_params()
    plain = twin(params)
    grads = gradients()
    wrapper = SAGE(ShrinkingSGD(params, lr=0.1))
    run_optimizer(wrapper, params, grads)
    ema = [torch.zeros_like(q) for q in plain]
    for t, step_grads in enumerate(zip(*grads), start=1):
        for i, (q, g) in enumerate(zip(plain, step_grads)):
            multiplier, ema[i] = reference_multiplier(q.detach(), g, ema[i], t, 0.8, 1e-12)
            q.data.sub_(0.1 * multiplier * g)
    for p, q in zip(params, plain):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_state_dict_round_trip_continues_bit_identically():
    params = make_params()
    grads = gradients()
    straight = twin(params)
    run_optimizer(SAGE(torch.optim.Adafactor(straight, lr=1e-2, weight_decay=0.1)), straight, grads)

    first = SAGE(torch.optim.Adafactor(params, lr=1e-2, weight_decay=0.1))
    run_optimizer(first, params, [g[:5] for g in grads])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["sage"] == {"beta0": 0.8, "sage_eps": 1e-12, "params": [0, 1, 2]}
    assert all(saved["state"][i]["sage_step"] == 5 for i in range(3))
    assert all(saved["state"][i]["step"] == 5 for i in range(3)), "the base's own state is kept"
    resumed = SAGE(torch.optim.Adafactor(params, lr=1e-2, weight_decay=0.1))
    resumed.load_state_dict(saved)
    run_optimizer(resumed, params, [g[5:] for g in grads])
    for p, q in zip(params, straight):
        assert torch.equal(p, q)


def test_lr_scheduler_drives_the_base_optimizer(recwarn):
    params = make_params()
    manual = twin(params)
    grads = gradients()
    wrapper = SAGE(torch.optim.SGD(params, lr=0.1, momentum=0.9))
    scheduler = torch.optim.lr_scheduler.StepLR(wrapper, step_size=1, gamma=0.5)
    by_hand = SAGE(torch.optim.SGD(manual, lr=0.1, momentum=0.9))
    for t, step_grads in enumerate(zip(*grads)):
        for p, q, g in zip(params, manual, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        wrapper.step()
        scheduler.step()
        by_hand.param_groups[0]["lr"] = 0.1 * 0.5**t
        by_hand.step()
        assert wrapper.optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** (t + 1)
    for p, q in zip(params, manual):
        assert torch.equal(p, q)
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]


def test_closure_is_evaluated_once_and_its_loss_returned():
    params = make_params([(4,)])
    target = torch.arange(4.0)
    calls = []

    def closure():
        calls.append(1)
        params[0].grad = None
        loss = (params[0] - target).pow(2).sum()
        loss.backward()
        return loss

    wrapper = SAGE(torch.optim.Adam(params, lr=0.1))
    before = params[0].detach().clone()
    loss = wrapper.step(closure)
    assert calls == [1]
    assert loss.item() == pytest.approx((before - target).pow(2).sum().item())
    assert not torch.equal(params[0], before)


@IMPLS
def test_bfloat16_parameters_are_combined_in_float32_and_rounded_once(impl):
    """foreach rounds exactly the float32 result computed here; cpp, whose float32 arithmetic
    divides once, may differ from it by a rounding step of bfloat16 (at most eps·|θ|)."""
    params = make_params(dtype=torch.bfloat16)
    base_twin = twin(params)
    grads = gradients(dtype=torch.bfloat16, steps=3)
    wrapper = SAGE(torch.optim.Adam(params, lr=1e-2), impl=impl)
    plain = torch.optim.Adam(base_twin, lr=1e-2)
    ema = [torch.zeros(p.shape) for p in params]
    for t, step_grads in enumerate(zip(*grads), start=1):
        for p, q, g in zip(params, base_twin, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        olds = [q.detach().float() for q in base_twin]
        wrapper.step()
        plain.step()  # the base's step from the same weights and state gives θ_new
        for i, (p, q, g, old) in enumerate(zip(params, base_twin, step_grads, olds)):
            multiplier, ema[i] = reference_multiplier(old, g.float(), ema[i], t, 0.8, 1e-12)
            expected = (old + multiplier * (q.detach().float() - old)).bfloat16()
            if impl == "foreach":
                assert torch.equal(p.detach(), expected), (t, i)
            else:
                ulp = torch.finfo(torch.bfloat16).eps * expected.float().abs().clamp(min=2**-126)
                assert ((p.detach().float() - expected.float()).abs() <= ulp).all(), (t, i)
            q.data.copy_(p.detach())  # both continue from the modulated weights
    state = wrapper.state[params[0]]["sensitivity_ema"]
    assert state.dtype == torch.float32
    torch.testing.assert_close(state, ema[0], rtol=1e-6, atol=0)
    reloaded = SAGE(torch.optim.Adam(params, lr=1e-2))
    reloaded.load_state_dict(wrapper.state_dict())
    assert torch.equal(reloaded.state[params[0]]["sensitivity_ema"], state)


def test_a_non_finite_gradient_skips_the_update_and_leaves_all_state_alone():
    params = make_params()
    grads = gradients(steps=2)
    wrapper = SAGE(torch.optim.Adam(params, lr=1e-2))
    run_optimizer(wrapper, params, [g[:1] for g in grads])
    before = copy.deepcopy((wrapper.state_dict(), [p.detach().clone() for p in params]))
    for p, g in zip(params, grads):
        p.grad = g[1].clone()
    params[1].grad[2] = float("nan")
    with pytest.warns(RuntimeWarning, match="update skipped"):
        wrapper.step()
    after = wrapper.state_dict()
    assert all(torch.equal(p, q) for p, q in zip(params, before[1]))
    for i, entry in before[0]["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][i][key])), (i, key)


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))], ids=["deepcopy", "pickle"])
def test_a_copy_continues_like_the_original_and_independently(duplicate):
    params = make_params()
    grads = gradients()
    original = SAGE(torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1), beta0=0.6, params=params[:2])
    run_optimizer(original, params, [g[:4] for g in grads])
    clone = duplicate(original)
    clone_params = [p for group in clone.param_groups for p in group["params"]]
    assert [id(p) for p in clone.sage_params] == [id(p) for p in clone_params[:2]]
    assert set(map(id, clone.state)) == set(map(id, clone_params[:2]))
    run_optimizer(original, params, [g[4:] for g in grads])
    frozen = [p.detach().clone() for p in params]
    run_optimizer(clone, clone_params, [g[4:] for g in grads])
    for p, q, r in zip(params, clone_params, frozen):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_the_overhead_benchmark_prints_a_row_per_optimizer(capsys):
    from benchmarks import wrapper_overhead

    wrapper_overhead.main(["--arch", "tiny", "--warmup", "1", "--repeats", "2"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms" not in line]
    by_name = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}
    assert list(by_name) == ["Adafactor", "SAGE(Adafactor)", "SAGE(Adafactor) foreach", "Adam", "SAGE(Adam)",
                             "SAGE(Adam) foreach", "AdamSAGE"]
    for base in ("Adafactor", "Adam"):
        assert by_name[base][1] == "1.00"
        for row in (f"SAGE({base})", f"SAGE({base}) foreach"):
            assert float(by_name[row][2]) == pytest.approx(float(by_name[base][2]) + 4, abs=0.02), "Ī: 4 bytes"
    assert float(by_name["AdamSAGE"][2]) == pytest.approx(12, abs=0.02)  # m, v, Ī


def test_auto_modulates_contiguous_cpu_tensors_with_the_kernel_and_the_rest_with_foreach(monkeypatch):
    from fairseq_sage.optim import fused_cpu, wrapper

    calls = []
    kernel = fused_cpu.modulate_
    monkeypatch.setattr(wrapper.fused_cpu, "modulate_", lambda params, *rest: calls.append(
        [tuple(p.shape) for p in params]) or kernel(params, *rest))
    generator = torch.Generator().manual_seed(5)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=generator)),
              torch.nn.Parameter(torch.randn(6, 5, generator=generator).t()),
              torch.nn.Parameter(torch.randn(7, generator=generator).bfloat16())]
    others = twin(params)
    grads = [gradient_sequence(p.shape, p.dtype, 2, seed=i) for i, p in enumerate(params)]
    run_optimizer(SAGE(torch.optim.Adam(params, lr=1e-2)), params, grads)
    assert sorted(calls) == [[(4, 3)], [(4, 3)], [(7,)], [(7,)]]  # per step, one call per dtype
    calls.clear()
    run_optimizer(SAGE(torch.optim.Adam(others, lr=1e-2), impl="foreach"), others, grads)
    assert calls == []
    for p, q in zip(params, others):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)  # float32; bfloat16 within one rounding


def test_an_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="impl must be one of auto, foreach, cpp, got 'fused'"):
        SAGE(torch.optim.Adam(make_params(), lr=1e-2), impl="fused")



# Refusals change nothing; what the base optimizer supports reaches it.


def all_params(wrapper):
    return [p for group in wrapper.param_groups for p in group["params"]]


def snapshot(wrapper):
    """Everything a refused call must leave alone: the weights, the base optimizer's state dict
    (its state and groups), SAGE's state (t, Ī), which parameters get SAGE, β0 and ε."""
    params = all_params(wrapper)
    return {
        "params": [p.detach().clone() for p in params],
        "base": copy.deepcopy(wrapper.optimizer.state_dict()),
        "sage": {i: copy.deepcopy(wrapper.state[p]) for i, p in enumerate(params) if p in wrapper.state},
        "sage_params": [id(p) for p in wrapper.sage_params],
        "settings": (wrapper.beta0, wrapper.sage_eps),
    }


def assert_identical(before, after, where="snapshot"):
    """Tensors equal bit for bit (and of the same dtype), containers of the same keys and lengths."""
    if torch.is_tensor(before):
        assert torch.is_tensor(after) and before.dtype == after.dtype and torch.equal(before, after), where
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for key in before:
            assert_identical(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), where
        for i, (b, a) in enumerate(zip(before, after)):
            assert_identical(b, a, f"{where}[{i}]")
    else:
        assert before == after, where


def other_sage_params(wrapper):
    """A state dict of a wrapper over the same weights that modulates other parameters."""
    others = twin(all_params(wrapper))
    other = SAGE(torch.optim.ASGD(others, lr=1e-2), params=others[1:])
    run_optimizer(other, others, [g[:2] for g in gradients()])
    return lambda: wrapper.load_state_dict(other.state_dict())


def damaged(edit):
    """A refused load of the wrapper's own state dict after ``edit(state_dict)``."""
    def refused_call(wrapper):
        state_dict = copy.deepcopy(wrapper.state_dict())
        edit(state_dict)
        return lambda: wrapper.load_state_dict(state_dict)
    return refused_call


def sparse_gradient_on_a_sage_parameter(wrapper):
    def step():
        for p, g in zip(all_params(wrapper), gradients(steps=1)):
            p.grad = g[0].clone()
        wrapper.sage_params[0].grad = wrapper.sage_params[0].grad.to_sparse()
        wrapper.step()
    return step


REFUSALS = {
    "add_param_group with a weight decay SAGE cannot keep apart": (
        lambda w: lambda: w.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "weight_decay": 0.1}),
        ValueError, "SAGE does not know whether ASGD decays weights"),
    "add_param_group with a complex parameter": (
        lambda w: lambda: w.add_param_group({"params": [torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))]}),
        ValueError, "SAGE cannot modulate complex parameters"),
    "load_state_dict of other SAGE parameters": (
        other_sage_params, ValueError, r"modulates parameters \[1, 2\], this wrapper \[0, 1\]"),
    "load_state_dict with a sensitivity_ema of another shape": (
        damaged(lambda sd: sd["state"][0].update(sensitivity_ema=sd["state"][0]["sensitivity_ema"].reshape(-1))),
        ValueError, r"parameter 0's sensitivity_ema has shape \(24,\), the parameter \(6, 4\)"),
    "load_state_dict with SAGE state for a parameter without SAGE": (
        damaged(lambda sd: sd["state"][2].update(sensitivity_ema=torch.zeros(3, 2, 4), sage_step=3)),
        ValueError, r"holds SAGE state for parameter 2, not one of its SAGE parameters \[0, 1\]"),
    "load_state_dict with a sage_step missing": (
        damaged(lambda sd: sd["state"][1].pop("sage_step")),
        ValueError, "parameter 1's entry of the state dict lacks sage_step"),
    "load_state_dict whose groups the base refuses": (
        damaged(lambda sd: sd["param_groups"][0].update(params=[0, 1])),
        ValueError, "doesn't match the size of optimizer's group"),
    "load_state_dict of a plain optimizer": (
        lambda w: lambda: w.load_state_dict(torch.optim.ASGD(twin(all_params(w)), lr=1e-2).state_dict()),
        ValueError, "holds no SAGE state"),
    "step with a sparse gradient on a SAGE parameter": (
        sparse_gradient_on_a_sage_parameter, RuntimeError, "leave those out of SAGE's params="),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_call_leaves_weights_and_every_state_as_they_were(case):
    """ASGD: a class without a decay rule. After three updates, the refused call changes nothing
    (weights, the base's state and groups, Ī, t, the SAGE parameters) and training goes on."""
    refused_call, error, message = REFUSALS[case]
    params = make_params()
    grads = gradients(steps=5)
    wrapper = SAGE(torch.optim.ASGD(params, lr=1e-2), params=params[:2])
    run_optimizer(wrapper, params, [g[:3] for g in grads])
    before = snapshot(wrapper)
    with pytest.raises(error, match=message):
        refused_call(wrapper)()
    assert_identical(before, snapshot(wrapper))
    run_optimizer(wrapper, params, [g[3:] for g in grads])
    assert all(wrapper.state[p]["step"] == 5 for p in params[:2])


def test_complex_parameters_are_refused_before_any_step_unless_left_out_of_sage():
    generator = torch.Generator().manual_seed(2)
    real = torch.nn.Parameter(torch.randn(4, generator=generator))
    complex_ = torch.nn.Parameter(torch.randn(3, generator=generator, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"SAGE cannot modulate complex parameters \(got one of dtype "
                                         r"torch.complex64\); leave it out of SAGE's params="):
        SAGE(torch.optim.Adam([real, complex_], lr=1e-2))
    plain = [torch.nn.Parameter(p.detach().clone()) for p in (real, complex_)]
    wrapper = SAGE(torch.optim.Adam([real, complex_], lr=1e-2), params=[real])
    bare = torch.optim.Adam(plain, lr=1e-2)
    for _ in range(3):
        for p, q in zip((real, complex_), plain):
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            q.grad = p.grad.clone()
        wrapper.step()
        bare.step()
    assert torch.equal(complex_, plain[1]), "the excluded complex parameter gets the plain base update"
    assert not torch.equal(real, plain[0]) and wrapper.state[real]["step"] == 3


@pytest.mark.parametrize("impl", ["foreach", "auto"])
def test_float64_state_round_trips_bit_for_bit(impl):
    params = make_params(dtype=torch.float64)
    grads = gradients(dtype=torch.float64)
    straight = twin(params)
    run_optimizer(SAGE(torch.optim.AdamW(straight, lr=1e-2, weight_decay=0.1), impl=impl), straight, grads)

    first = SAGE(torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1), impl=impl)
    run_optimizer(first, params, [g[:5] for g in grads])
    assert first.state[params[0]]["sensitivity_ema"].dtype == torch.float64
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = SAGE(torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1), impl=impl)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(resumed.state[p]["sensitivity_ema"].dtype == torch.float64 for p in params)
    run_optimizer(resumed, params, [g[5:] for g in grads])
    for p, q in zip(params, straight):
        assert torch.equal(p, q)


CYCLIC_SCHEDULES = {
    "OneCycleLR over Adam": (lambda p: torch.optim.Adam(p, lr=1e-2), "betas",
                             lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=STEPS)),
    "CyclicLR over SGD with momentum": (
        lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9), "momentum",
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3)),
}


@pytest.mark.parametrize("case", sorted(CYCLIC_SCHEDULES))
def test_schedulers_that_cycle_momentum_drive_the_base_optimizer(case):
    """With their defaults (cycle_momentum=True) the schedulers read the base's defaults, and the
    lr and momentum (β1) they set at each step are those they set on the bare base optimizer, and
    are the ones that update the weights: a wrapper whose groups are set by hand to the same
    values ends bit-identical."""
    build, momentum, schedule = CYCLIC_SCHEDULES[case]
    params = make_params()
    bare_params, manual = twin(params), twin(params)
    grads = gradients()
    wrapper = SAGE(build(params))
    scheduler = schedule(wrapper)
    bare = build(bare_params)
    bare_scheduler = schedule(bare)
    by_hand = SAGE(build(manual))
    seen = []
    for step_grads in zip(*grads):
        expected = {key: bare.param_groups[0][key] for key in ("lr", momentum)}
        assert {key: wrapper.optimizer.param_groups[0][key] for key in expected} == expected
        by_hand.param_groups[0].update(expected)
        seen.append(expected)
        for ps in (params, bare_params, manual):
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
        for optimizer in (wrapper, bare, by_hand):
            optimizer.step()
        scheduler.step()
        bare_scheduler.step()
    assert len({s["lr"] for s in seen}) > 3 and len({str(s[momentum]) for s in seen}) > 3, "the schedule varies"
    for p, q in zip(params, manual):
        assert torch.equal(p, q)


@pytest.mark.parametrize("base", [lambda p: torch.optim.SGD(p, lr=0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)],
                         ids=["SGD", "Adagrad"])
def test_sparse_gradients_of_parameters_left_out_of_sage_get_the_plain_base_update(base):
    """An nn.Embedding(sparse=True) left out of SAGE: its weights follow the bare base optimizer
    bit for bit, the dense weight beside it gets SAGE exactly as it would alone; a NaN in the
    sparse gradient skips the whole update."""
    torch.manual_seed(4)
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    dense = torch.nn.Parameter(torch.randn(3, 2))
    bare_embedding = copy.deepcopy(embedding)
    alone = torch.nn.Parameter(dense.detach().clone())
    wrapper = SAGE(base([embedding.weight, dense]), params=[dense])
    bare = base(bare_embedding.parameters())
    sage_alone = SAGE(base([alone]))
    for step in range(4):
        tokens = torch.randint(0, 10, (5,))
        for table, weight in ((embedding, dense), (bare_embedding, alone)):
            table.weight.grad = None
            (table(tokens) @ weight.detach()).pow(2).sum().backward()
            weight.grad = torch.full_like(weight, 0.1 * (step + 1)) - weight.detach()
        assert embedding.weight.grad.is_sparse
        wrapper.step()
        bare.step()
        sage_alone.step()
    assert torch.equal(embedding.weight, bare_embedding.weight)
    assert torch.equal(dense, alone) and wrapper.state[dense]["step"] == 4
    assert embedding.weight not in wrapper.state

    before = snapshot(wrapper)
    embedding.weight.grad = torch.sparse_coo_tensor([[1]], torch.tensor([[float("nan"), 0.0, 0.0]]), (10, 3),
                                                         check_invariants=True)
    with pytest.warns(RuntimeWarning, match="update skipped"):
        wrapper.step()
    assert_identical(before, snapshot(wrapper))
