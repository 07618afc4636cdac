"""The fast implementations (foreach, cpp, compiled) against the per-tensor reference path.

Each runs the four optimizers on float32, float16 and bfloat16 parameters spread over three
groups (defaults; their own lr and beta0; SAGE off) and must end with the reference path's weights
and state to float32 rounding (to one rounding step of the parameter's own dtype for half
precision). The ``compiled`` path is the CUDA one (Triton there); here inductor compiles the same
graph to C++, which checks everything but the generated GPU code.
"""

import copy
import dataclasses
import logging
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from fairseq_sage import AdamaxSAGE, AdamSAGE, LionSAGE, NAdamSAGE, SGDSAGE
from fairseq_sage.optim import base_steps, implementations, multi_tensor
from fairseq_sage.optim.base_steps import ADAM

OPTIMIZERS = {
    "adam": (AdamSAGE, dict(lr=3e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, beta0=0.8)),
    "adamax": (AdamaxSAGE, dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, beta0=0.6)),
    "sgd": (SGDSAGE, dict(lr=0.05, momentum=0.9, weight_decay=0.01, beta0=0.4)),
    "lion": (LionSAGE, dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, beta0=0.8)),
    "nadam": (NAdamSAGE, dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, momentum_decay=0.1,
                              beta0=0.8)),
}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = [(7,), (5, 3), (2, 3, 4), (33, 17)]
STEPS = 12


@pytest.fixture(autouse=True)
def two_threads():
    """torch's 2 threads, whatever the suite's share of the cores: the kernel splits its work between them."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def make_params(dtypes=DTYPES, shapes=SHAPES, seed=0):
    """One parameter per shape and dtype; the first holds exact zeros, as fairseq's biases do."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for dtype in dtypes:
        for shape in shapes:
            init = torch.randn(shape, generator=generator)
            init.view(-1)[:3] = 0.0
            params.append(torch.nn.Parameter(init.to(dtype)))
    return params


def gradients(params, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=generator).to(p.dtype) for p in params] for _ in range(steps)]


def grouped(params, hp):
    """Three groups: the defaults, their own lr and beta0, SAGE off (every third parameter each)."""
    return [
        {"params": params[0::3]},
        {"params": params[1::3], "lr": hp["lr"] / 2, "beta0": 0.9},
        {"params": params[2::3], "sage": False},
    ]


def train(kind, impl, steps=STEPS, params=None, **changes):
    cls, hp = OPTIMIZERS[kind]
    hp = dict(hp, **changes)
    params = make_params() if params is None else params
    optimizer = cls(grouped(params, hp), impl=impl, **hp)
    for grads in gradients(params, steps):
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        optimizer.step()
    return params, optimizer


def tolerance(dtype, atol=2e-6):
    """float32: rounding; float16/bfloat16: one rounding step of the dtype (a tie may round apart)."""
    if dtype in (torch.float32, torch.float64):
        return dict(rtol=2e-5, atol=atol)
    return dict(rtol=2 * torch.finfo(dtype).eps, atol=max(atol, 1e-5))


def assert_same_training(params, optimizer, ref_params, ref_optimizer, atol=2e-6):
    for param, ref in zip(params, ref_params):
        assert param.dtype == ref.dtype
        torch.testing.assert_close(param.detach(), ref.detach(), **tolerance(param.dtype, atol))
        state, ref_state = optimizer.state[param], ref_optimizer.state[ref]
        assert state.keys() == ref_state.keys()
        assert type(state["step"]) is int and state["step"] == ref_state["step"]
        state_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        for key, value in ref_state.items():
            if torch.is_tensor(value):
                assert state[key].dtype == value.dtype == state_dtype
                torch.testing.assert_close(state[key], value, **tolerance(param.dtype, atol))
            else:  # the step count and a base's scalar state (NAdam's Π μ_i), computed alike on every path
                assert state[key] == value, key


@pytest.fixture(scope="module")
def reference_runs():
    return {kind: train(kind, "reference") for kind in OPTIMIZERS}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("impl", ["foreach", "cpp"])
def test_eager_fast_paths_match_reference(kind, impl, reference_runs):
    params, optimizer = train(kind, impl)
    assert_same_training(params, optimizer, *reference_runs[kind])
    assert "sensitivity_ema" not in optimizer.state[params[2]], "a SAGE-off group keeps no Ī"


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_compiled_path_matches_reference(kind, reference_runs):
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    params, optimizer = train(kind, "compiled")
    assert counters["stats"]["unique_graphs"] > graphs_before, "nothing was compiled"
    assert_same_training(params, optimizer, *reference_runs[kind])


def test_sgd_without_momentum_keeps_no_buffer(reference_runs):
    params = make_params(dtypes=(torch.float32,))
    _, optimizer = train("sgd", "cpp", params=params, momentum=0.0)
    ref_params, ref_optimizer = train("sgd", "reference", params=make_params(dtypes=(torch.float32,)),
                                      momentum=0.0)
    # Without momentum nothing smooths the multiplier (U + ε)/(Ī_c + ε): where I ≈ Ī_c, U keeps
    # few significant bits and a last-bit difference in I moves the weight by ~1e-4 · lr · |g|.
    assert_same_training(params, optimizer, ref_params, ref_optimizer, atol=5e-5)
    assert "momentum_buffer" not in optimizer.state[params[0]]


def test_foreach_cuts_large_tensors_into_bounded_batches(monkeypatch, reference_runs):
    """Temporaries stay within CHUNK_ELEMENTS per batch: here 40 elements, so the 33x17 weights go
    in slices and the small tensors share batches."""
    monkeypatch.setattr(multi_tensor, "CHUNK_ELEMENTS", 40)
    batch_sizes = []
    chain = multi_tensor.update_chain_

    def recording_chain(base, constants, weights, *args):
        batch_sizes.append(sum(w.numel() for w in weights))
        return chain(base, constants, weights, *args)

    monkeypatch.setattr(multi_tensor, "update_chain_", recording_chain)
    params, optimizer = train("adam", "foreach")
    assert_same_training(params, optimizer, *reference_runs["adam"])
    assert max(batch_sizes) == 40
    assert len(batch_sizes) >= STEPS * 3 * math.ceil(33 * 17 / 40), "the large tensors were not sliced"


def test_cpp_leaves_unsupported_tensors_to_the_reference_path():
    """float64 and non-contiguous parameters are updated the reference way, bit for bit."""
    def params():
        torch.manual_seed(0)
        transposed = torch.nn.Parameter(torch.randn(6, 4).t())
        return [torch.nn.Parameter(torch.randn(5, dtype=torch.float64)), transposed,
                torch.nn.Parameter(torch.randn(8))]

    ours, ours_optimizer = train("adam", "cpp", params=params())
    ref, ref_optimizer = train("adam", "reference", params=params())
    assert not ours[1].is_contiguous()
    for i in (0, 1):
        assert torch.equal(ours[i], ref[i])
    assert_same_training(ours, ours_optimizer, ref, ref_optimizer)


FINITE_EXTREMES = {  # finite values whose bits lie closest to those of inf and NaN, and the signed zero
    dtype: [torch.finfo(dtype).max, -torch.finfo(dtype).max, torch.finfo(dtype).smallest_normal / 2, -0.0]
    for dtype in DTYPES
}


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_finite_check_is_torch_isfinite(dtype):
    """Tensors across several of the kernel's blocks of 32k elements and both threads' halves."""
    from fairseq_sage.optim import fused_cpu

    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=generator).to(dtype) for n in (3, 100_003, 40_000)]
    tensors[1][:4] = torch.tensor(FINITE_EXTREMES[dtype])
    assert fused_cpu.all_finite(tensors) and all(torch.isfinite(t).all() for t in tensors)
    assert fused_cpu.all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for index, position in [(0, 0), (1, 0), (1, 65_537), (1, 100_002), (2, 39_999)]:
            damaged = [t.clone() for t in tensors]
            damaged[index][position] = bad
            assert not fused_cpu.all_finite(damaged), (bad, index, position)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["kernel", "reference"])
def test_a_non_finite_gradient_skips_the_whole_fused_update(monkeypatch, where, bad_value):
    """auto on CPU: the kernel checks the gradients it updates, torch the others (float64); one bad
    element, in the last tensor of the last group or in the float64 one, leaves every weight and
    every state buffer of every group as it was, and the run then goes on as if it had never come."""
    from fairseq_sage.optim import fused_cpu

    checked = []
    kernel_check = fused_cpu.all_finite
    monkeypatch.setattr(fused_cpu, "all_finite",
                        lambda tensors: checked.append(len(tensors)) or kernel_check(tensors))
    cls, hp = OPTIMIZERS["adam"]

    def params():
        wide = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        return make_params(shapes=[(7,), (300, 250)]) + [torch.nn.Parameter(wide)]

    ours, control = params(), params()
    optimizer, control_optimizer = (cls(grouped(p, hp), **hp) for p in (ours, control))
    steps = gradients(ours, 4)
    bad = [g.clone() for g in steps[2]]
    bad[-2 if where == "kernel" else -1].view(-1)[-1] = bad_value
    for step, step_grads in enumerate(steps):
        for param, grad in zip(ours, bad if step == 2 else step_grads):
            param.grad = grad.clone()
        if step == 2:
            before = copy.deepcopy((ours, optimizer.state_dict()))
            with pytest.warns(RuntimeWarning, match="update skipped"):
                optimizer.step()
            for param, saved in zip(ours, before[0]):
                assert torch.equal(param, saved)
            saved_state, state = before[1]["state"], optimizer.state_dict()["state"]
            assert saved_state.keys() == state.keys()
            for index, values in saved_state.items():
                for key, value in values.items():
                    assert torch.equal(torch.as_tensor(state[index][key]), torch.as_tensor(value)), (index, key)
            continue
        optimizer.step()
        for param, grad in zip(control, step_grads):
            param.grad = grad.clone()
        control_optimizer.step()
    assert checked and set(checked) == {len(ours) - 1}, "the kernel did not check the gradients it updates"
    for param, expected in zip(ours, control):
        assert torch.equal(param, expected)


@pytest.mark.parametrize("first, second", [("cpp", "foreach"), ("foreach", "reference"), ("reference", "cpp")])
@pytest.mark.parametrize("kind", ["adam", "nadam"])
def test_checkpoints_continue_across_implementations(kind, first, second):
    """A state_dict saved with one implementation continues with another as if never interrupted."""
    cls, hp = OPTIMIZERS[kind]
    ref_params, ref_optimizer = train(kind, "reference")
    params = make_params()
    optimizer = cls(grouped(params, hp), impl=first, **hp)
    grads = gradients(params, STEPS)
    for step, step_grads in enumerate(grads):
        if step == STEPS // 2:
            saved = copy.deepcopy(optimizer.state_dict())
            optimizer = cls(grouped(params, hp), impl=second, **hp)
            optimizer.load_state_dict(saved)
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        optimizer.step()
    assert_same_training(params, optimizer, ref_params, ref_optimizer)


def test_auto_picks_the_fused_kernel_on_cpu():
    assert implementations.choose_implementation("auto", "cpu", ADAM) == "cpp"
    assert implementations.choose_implementation("auto", "mps", ADAM) == "foreach"
    assert implementations.choose_implementation("reference", "cpu", ADAM) == "reference"


def test_auto_picks_compiled_on_cuda_where_triton_is_installed(monkeypatch, caplog):
    implementations.fall_back.cache_clear()
    monkeypatch.setattr(implementations, "compiler_missing", lambda device_type: "")
    assert implementations.choose_implementation("auto", "cuda", ADAM) == "compiled"
    monkeypatch.setattr(implementations, "compiler_missing", lambda device_type: "Triton is not installed")
    with caplog.at_level(logging.WARNING):
        assert implementations.choose_implementation("auto", "cuda", ADAM) == "foreach"
    assert "Triton is not installed" in caplog.text


def test_a_base_the_kernel_does_not_implement_runs_foreach(monkeypatch, caplog, reference_runs):
    """A registry entry that names no kernel: auto runs foreach on CPU (one warning, the reference's
    results), and impl='cpp' is refused with the fix."""
    unfused = dataclasses.replace(base_steps.LION, name="lion_unfused", kernel=None)
    monkeypatch.setitem(OPTIMIZERS, "lion", (type("UnfusedLionSAGE", (LionSAGE,), {"_base": unfused}),
                                             OPTIMIZERS["lion"][1]))
    foreach_calls = []
    foreach_update = multi_tensor.foreach_update_
    monkeypatch.setattr(multi_tensor, "foreach_update_",
                        lambda base, *args: foreach_calls.append(base.name) or foreach_update(base, *args))
    implementations.fall_back.cache_clear()
    with caplog.at_level(logging.WARNING):
        params, optimizer = train("lion", "auto")
    assert set(foreach_calls) == {"lion_unfused"}
    assert_same_training(params, optimizer, *reference_runs["lion"])
    warnings = [r.message for r in caplog.records if "SAGE update is unavailable" in r.message]
    assert warnings == ["fairseq-sage: the cpp SAGE update is unavailable for cpu tensors (the fused CPU kernel "
                        "does not implement lion_unfused); using the slower foreach implementation"]
    with pytest.raises(RuntimeError, match=re.escape("impl='cpp': the fused CPU kernel does not implement "
                                                     "lion_unfused; use impl='foreach'")):
        train("lion", "cpp", steps=1)


def test_invalid_or_impossible_requests_raise():
    with pytest.raises(ValueError, match="impl must be one of auto, reference, foreach, cpp, compiled"):
        AdamSAGE([torch.nn.Parameter(torch.zeros(2))], impl="fused")
    with pytest.raises(ValueError, match="impl='cpp' updates CPU tensors only"):
        implementations.choose_implementation("cpp", "cuda", ADAM)


def test_a_failed_compilation_falls_back_to_foreach_once(monkeypatch, caplog, reference_runs):
    """auto on a device whose compiler fails: one warning, the update done by foreach, no retry."""
    calls = []

    def failing_compile(base, work):
        calls.append(base.name)
        raise torch._dynamo.exc.TorchDynamoException("InductorError: no working C++ compiler\nmore detail")

    implementations.fall_back.cache_clear()
    monkeypatch.setitem(implementations.PREFERRED, "cpu", "compiled")
    monkeypatch.setattr(implementations, "_compile_failures", {})
    monkeypatch.setattr(multi_tensor, "compiled_update_", failing_compile)
    with caplog.at_level(logging.WARNING):
        params, optimizer = train("adam", "auto")
    assert calls == ["adam"], "compilation retried after it failed"
    assert_same_training(params, optimizer, *reference_runs["adam"])
    warnings = [r for r in caplog.records if "compiled SAGE update is unavailable" in r.message]
    assert len(warnings) == 1 and "no working C++ compiler" in warnings[0].message
    with pytest.raises(RuntimeError, match=re.escape("no working C++ compiler")):
        train("adam", "compiled", steps=1)


FALLBACK_SCRIPT = """
import torch
from fairseq_sage import AdamSAGE
torch.manual_seed(0)
init = torch.randn(10)
auto, foreach = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
optimizers = [AdamSAGE([auto], lr=0.1), AdamSAGE([foreach], lr=0.1, impl="foreach")]
for _ in range(3):
    auto.grad = torch.randn(10)
    foreach.grad = auto.grad.clone()
    for optimizer in optimizers:
        optimizer.step()
print("MOVED", bool((auto != init).all()), "AS_FOREACH", torch.equal(auto, foreach))
"""


def test_without_a_compiler_auto_falls_back_to_foreach_with_one_log_line(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MOVED True AS_FOREACH True" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "SAGE update is unavailable" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "the cpp SAGE update is unavailable for cpu tensors" in lines[0]
    assert "using the slower foreach implementation" in lines[0]


def fairseq_optimizer(*flags):
    """The optimizer ``fairseq-train --optimizer adam_sage FLAGS`` builds, on two parameters."""
    options = pytest.importorskip("fairseq.options")
    import fairseq_sage.fairseq  # noqa: F401  (registers the optimizers, as --user-dir does)
    from fairseq import optim
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = ["unused-data-dir", "--task", "translation", "--arch", "transformer", "--cpu",
            "--optimizer", "adam_sage", "--lr", "1e-3", *flags]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    return optim.build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2))])


def test_sage_impl_flag_reaches_the_optimizer():
    assert fairseq_optimizer().optimizer.impl == "auto"
    optimizer = fairseq_optimizer("--sage-impl", "foreach").optimizer
    assert optimizer.impl == "foreach"
    assert optimizer.check_finite is False, "fairseq's trainer checks gradients before stepping"


def test_sage_impl_flag_rejects_unknown_values(capsys):
    with pytest.raises(SystemExit):
        fairseq_optimizer("--sage-impl", "fused")
    assert "--sage-impl: invalid choice: 'fused'" in capsys.readouterr().err
