"""SAGE under fairseq's mixed precision: --fp16, --memory-efficient-fp16, --bf16, --memory-efficient-bf16.

fairseq's ``FP16Optimizer`` (--fp16, --bf16) steps our optimizer on float32 copies of the weights
(one flat copy for --fp16) with gradients unscaled in float32; ``MemoryEfficientFP16Optimizer``
(--memory-efficient-*) steps it on the half-precision weights themselves, unscaling their
gradients in place. Here both wrappers are built from a real fairseq configuration and driven
the way fairseq's Trainer drives them, on CPU. The gradients our optimizer receives are checked
against the scaled ones divided by loss scale and sample size by hand, and its weights and Ī
against our optimizer run on separate float32 tensors with those gradients.
"""

import copy
import functools

import pytest
import torch
from torch import nn

from conftest import run_fairseq, train_args
from fairseq_sage import AdamaxSAGE, AdamSAGE, SGDSAGE
from fairseq_sage.checkpoints import load_checkpoint

fairseq_options = pytest.importorskip("fairseq.options")
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.optim import FP16Optimizer, MemoryEfficientFP16Optimizer  # noqa: E402

import fairseq_sage.fairseq  # noqa: E402,F401  (registers the optimizers, as --user-dir does)

OPTIMIZERS = {
    "adam_sage": (AdamSAGE, ["--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01"],
                  dict(betas=(0.9, 0.98), weight_decay=0.01)),
    "adamax_sage": (AdamaxSAGE, ["--adamax-betas", "(0.9, 0.999)"], dict(betas=(0.9, 0.999))),
    "sgd_sage": (SGDSAGE, ["--momentum", "0.9"], dict(momentum=0.9)),
}
LR = 0.01
BETA0 = 0.6

PRECISIONS = {
    # name: (fairseq flags, parameter dtype, keeps a float32 master copy)
    "fp16": (["--fp16"], torch.float16, True),
    "fp16-no-flatten-grads": (["--fp16", "--fp16-no-flatten-grads"], torch.float16, True),
    "memory-efficient-fp16": (["--memory-efficient-fp16"], torch.float16, False),
    "bf16": (["--bf16"], torch.bfloat16, True),
    "memory-efficient-bf16": (["--memory-efficient-bf16"], torch.bfloat16, False),
}
STEPS = 5


@functools.lru_cache(maxsize=None)
def _parsed_config(optimizer: str, flags: tuple):
    argv = ["unused-data-dir", "--task", "translation", "--arch", "transformer", "--cpu",
            "--optimizer", optimizer, "--lr", str(LR), "--sage-beta0", str(BETA0),
            *OPTIMIZERS[optimizer][1], *flags]
    return convert_namespace_to_omegaconf(
        fairseq_options.parse_args_and_arch(fairseq_options.get_training_parser(), argv)
    )


def fairseq_config(optimizer: str, *flags: str):
    """fairseq's full configuration for ``fairseq-train --optimizer OPTIMIZER FLAGS``."""
    return copy.deepcopy(_parsed_config(optimizer, flags))


class TinyModel(nn.Module):
    """An embedding and two linear layers: enough shapes, with exactly-zero biases at the start."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 5)
        nn.init.zeros_(self.hidden.bias)

    def forward(self, tokens):
        return self.out(torch.tanh(self.hidden(self.embed(tokens)))).float()


def make_model(dtype) -> TinyModel:
    torch.manual_seed(0)
    return TinyModel().to(dtype)


def batches(count=STEPS, size=12):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 11, (size,), generator=generator),
             torch.randint(0, 5, (size,), generator=generator)) for _ in range(count)]


def build_wrapper(cfg, model, monkeypatch):
    """The wrapper fairseq's Trainer builds for ``cfg`` (see ``Trainer._build_optimizer``)."""
    params = list(model.parameters())
    if cfg.common.memory_efficient_fp16 or cfg.common.memory_efficient_bf16:
        return MemoryEfficientFP16Optimizer.build_optimizer(cfg, params)
    # the flat master copy is allocated on "torch.cuda.current_device()"; CPU parameters have
    # device index None, which is what fairseq then looks the flat copy up by
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    return FP16Optimizer.build_optimizer(cfg, params)


def train_step(wrapper, model, batch, after_backward=None) -> bool:
    """One update as ``Trainer.train_step`` makes it; False when the wrapper skipped it (overflow).

    ``after_backward(model)`` may read or damage the (scaled) half-precision gradients.
    """
    tokens, targets = batch
    wrapper.zero_grad()
    loss = nn.functional.cross_entropy(model(tokens), targets, reduction="sum")
    wrapper.backward(loss)
    if after_backward is not None:
        after_backward(model)
    wrapper.multiply_grads(1.0 / len(targets))
    try:
        wrapper.clip_grad_norm(0.0)
        wrapper.step()
    except OverflowError:
        wrapper.zero_grad()
        return False
    return True


def loss_scale(wrapper) -> float:
    return wrapper.scaler.loss_scale if wrapper.scaler is not None else 1.0


def split_like(flat, params):
    """``flat`` cut into tensors shaped like ``params`` (fairseq's flat copy concatenates them in order)."""
    return [chunk.view_as(p) for chunk, p in zip(torch.split(flat, [p.numel() for p in params]), params)]


def master_weights(wrapper, model):
    """The float32 weights the optimizer updates, one tensor per model parameter."""
    params = list(model.parameters())
    if isinstance(wrapper, MemoryEfficientFP16Optimizer):
        return [p.detach().float() for p in params]
    if wrapper.has_flat_params:
        return split_like(wrapper.fp32_params[None].detach(), params)
    return [p32.detach() for p32 in wrapper.fp32_params]


def optimizer_state(wrapper, model, key):
    """State ``key`` of every model parameter, as float32 tensors shaped like the parameters."""
    params = list(model.parameters())
    torch_optimizer = wrapper.optimizer
    if getattr(wrapper, "has_flat_params", False):
        return split_like(torch_optimizer.state[wrapper.fp32_params[None]][key], params)
    optimized = wrapper.fp32_params if isinstance(wrapper, FP16Optimizer) else params
    return [torch_optimizer.state[p][key] for p in optimized]


class Float32Reference:
    """Our optimizer on float32 copies of the weights."""

    def __init__(self, optimizer: str, model, round_weights_to=None):
        cls, _, hyper = OPTIMIZERS[optimizer]
        self.params = [nn.Parameter(p.detach().float().clone()) for p in model.parameters()]
        self.optimizer = cls(self.params, lr=LR, beta0=BETA0, **hyper)
        self.round_weights_to = round_weights_to

    def step(self, gradients):
        for param, grad in zip(self.params, gradients):
            param.grad = grad.clone()
        self.optimizer.step()
        if self.round_weights_to is not None:  # the memory-efficient wrapper keeps no float32 copy
            with torch.no_grad():
                for param in self.params:
                    param.copy_(param.to(self.round_weights_to).float())

    def state(self, key):
        return [self.optimizer.state[p][key] for p in self.params]


def optimizer_gradients(wrapper, model):
    """The gradients our optimizer finds on the tensors it updates, one per model parameter."""
    params = list(model.parameters())
    if isinstance(wrapper, MemoryEfficientFP16Optimizer):
        return [p.grad for p in params]
    if wrapper.has_flat_params:
        return split_like(wrapper.fp32_params[None].grad, params)
    return [p32.grad for p32 in wrapper.fp32_params]


def record_optimizer_inputs(wrapper, model, monkeypatch) -> list:
    """A list to which every step of our optimizer inside ``wrapper`` appends the gradients it uses."""
    torch_optimizer = wrapper.optimizer
    inputs = []
    step = torch_optimizer.step

    def recording_step(*args, **kwargs):
        inputs.append([g.float().clone() for g in optimizer_gradients(wrapper, model)])
        return step(*args, **kwargs)

    monkeypatch.setattr(torch_optimizer, "step", recording_step)
    return inputs


def recorded_gradients(model):
    return [p.grad.detach().clone() for p in model.parameters()]


TIGHT = dict(rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_updates_use_unscaled_gradients_and_float32_weights(optimizer, precision, monkeypatch):
    flags, dtype, has_master = PRECISIONS[precision]
    model = make_model(dtype)
    wrapper = build_wrapper(fairseq_config(optimizer, *flags), model, monkeypatch)
    inputs = record_optimizer_inputs(wrapper, model, monkeypatch)
    reference = Float32Reference(optimizer, model, round_weights_to=None if has_master else dtype)
    scale = loss_scale(wrapper)
    assert scale == (1.0 if dtype == torch.bfloat16 else 128.0), "bf16 has no loss scaling"
    # fairseq unscales in float32 (master copy) or in the gradient's own precision (memory-efficient)
    unscaling = dict(rtol=1e-6, atol=0.0) if has_master else dict(
        rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).tiny)

    for update, batch in enumerate(batches(), start=1):
        scaled = []
        assert train_step(wrapper, model, batch, after_backward=lambda m: scaled.extend(recorded_gradients(m)))
        assert len(inputs) == update
        for used, raw in zip(inputs[-1], scaled):  # |θ·g| sees g = scaled gradient / (scale · size)
            torch.testing.assert_close(used.double(), raw.double() / (scale * len(batch[1])), **unscaling)
        reference.step(inputs[-1])

    for ours, expected in zip(master_weights(wrapper, model), reference.params):
        torch.testing.assert_close(ours, expected.detach(), **TIGHT)
    for weight, master in zip(model.parameters(), master_weights(wrapper, model)):
        assert weight.dtype == dtype
        assert torch.equal(weight.detach(), master.to(dtype)), "the model holds the rounded master weights"
    ema = optimizer_state(wrapper, model, "sensitivity_ema")
    assert all(e.dtype == torch.float32 for e in ema)
    # Ī = EMA of |θ·g| with float32 θ: weights rounded to half precision would show here
    for ours, expected in zip(ema, reference.state("sensitivity_ema")):
        torch.testing.assert_close(ours, expected, **TIGHT)
    assert all(s["step"] == STEPS for s in wrapper.optimizer.state.values())


def snapshot(wrapper, model):
    state = {key: [t.clone() for t in optimizer_state(wrapper, model, key)]
             for key in ("sensitivity_ema", "exp_avg", "exp_avg_sq")}
    state["weights"] = [w.clone() for w in master_weights(wrapper, model)]
    state["model"] = [p.detach().clone() for p in model.parameters()]
    state["step"] = sorted(s["step"] for s in wrapper.optimizer.state.values())
    return state


def assert_same_snapshot(a, b):
    assert a.keys() == b.keys() and a["step"] == b["step"]
    for key in a:
        if key != "step":
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")])
@pytest.mark.parametrize("precision", ["fp16", "memory-efficient-fp16"])
def test_overflowing_step_is_skipped_without_touching_state(precision, bad_value, monkeypatch):
    flags, dtype, _ = PRECISIONS[precision]
    model = make_model(dtype)
    wrapper = build_wrapper(fairseq_config("adam_sage", *flags), model, monkeypatch)
    good = batches(3)
    assert train_step(wrapper, model, good[0]) and train_step(wrapper, model, good[1])
    before, scale_before = snapshot(wrapper, model), loss_scale(wrapper)

    def overflow(m):
        m.hidden.weight.grad[0, 0] = bad_value

    assert not train_step(wrapper, model, good[2], after_backward=overflow), "fairseq skips the step"
    assert_same_snapshot(snapshot(wrapper, model), before)
    assert loss_scale(wrapper) == scale_before / 2
    assert train_step(wrapper, model, good[2]), "the next batch trains again"
    assert snapshot(wrapper, model)["step"] == [3] * len(before["step"])


@pytest.mark.parametrize("precision", ["fp16", "memory-efficient-fp16"])
def test_resuming_from_a_checkpoint(precision, monkeypatch):
    """The float32 optimizer state and the loss scale come back exactly; so do the weights, except
    that fairseq checkpoints hold --fp16's float32 master copy only rounded to float16."""
    flags, dtype, has_master = PRECISIONS[precision]
    model = make_model(dtype)
    cfg = fairseq_config("adam_sage", *flags)
    wrapper = build_wrapper(cfg, model, monkeypatch)
    data = batches(6)
    for batch in data[:3]:
        assert train_step(wrapper, model, batch)
    saved = copy.deepcopy({"model": model.state_dict(), "optimizer": wrapper.state_dict()})
    at_save = snapshot(wrapper, model)
    for batch in data[3:]:
        assert train_step(wrapper, model, batch)

    resumed_model = make_model(dtype)
    resumed_model.load_state_dict(saved["model"])
    resumed = build_wrapper(copy.deepcopy(cfg), resumed_model, monkeypatch)
    resumed.load_state_dict(copy.deepcopy(saved["optimizer"]))
    assert loss_scale(resumed) == saved["optimizer"]["loss_scale"] == loss_scale(wrapper)
    restored = snapshot(resumed, resumed_model)
    if has_master:  # the float32 master copy is rebuilt from the checkpoint's float16 weights
        master_at_save, rebuilt = at_save.pop("weights"), restored.pop("weights")
        assert all(torch.equal(r, m.to(dtype).float()) for r, m in zip(rebuilt, master_at_save))
        assert not all(torch.equal(r, m) for r, m in zip(rebuilt, master_at_save))
    assert_same_snapshot(restored, at_save)

    for batch in data[3:]:
        assert train_step(resumed, resumed_model, batch)
    if has_master:
        for a, b in zip(resumed_model.parameters(), model.parameters()):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=2 * torch.finfo(dtype).eps, atol=1e-5)
    else:
        assert_same_snapshot(snapshot(resumed, resumed_model), snapshot(wrapper, model))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_load_state_dict_keeps_float32_state_of_half_precision_parameters(dtype):
    """torch's Optimizer.load_state_dict casts state to the parameter's dtype; ours keeps float32."""
    torch.manual_seed(0)
    init = torch.randn(40).to(dtype)
    grads = [torch.randn(40).to(dtype) for _ in range(8)]

    def run(params, optimizer, gradients):
        for grad in gradients:
            params[0].grad = grad.clone()
            optimizer.step()

    straight = [nn.Parameter(init.clone())]
    run(straight, AdamSAGE(straight, lr=1e-2), grads)

    first = [nn.Parameter(init.clone())]
    optimizer = AdamSAGE(first, lr=1e-2)
    run(first, optimizer, grads[:4])
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = [nn.Parameter(first[0].detach().clone())]
    new_optimizer = AdamSAGE(resumed, lr=1e-2)
    new_optimizer.load_state_dict(saved)
    state = new_optimizer.state[resumed[0]]
    assert {state[k].dtype for k in ("exp_avg", "exp_avg_sq", "sensitivity_ema")} == {torch.float32}
    assert torch.equal(state["sensitivity_ema"], saved["state"][0]["sensitivity_ema"])
    run(resumed, new_optimizer, grads[4:])
    assert torch.equal(resumed[0], straight[0])


def test_sage_params_selects_parameters_under_memory_efficient_fp16(monkeypatch):
    model = make_model(torch.float16)
    cfg = fairseq_config("adam_sage", "--memory-efficient-fp16", "--sage-params", "^hidden")
    wrapper = build_wrapper(cfg, model, monkeypatch)
    for batch in batches(2):
        assert train_step(wrapper, model, batch)
    with_sage = {name for name, p in model.named_parameters() if "sensitivity_ema" in wrapper.optimizer.state[p]}
    assert with_sage == {"hidden.weight", "hidden.bias"}
    assert all(wrapper.optimizer.state[p]["step"] == 2 for p in model.parameters())


@pytest.mark.parametrize("precision", ["fp16", "fp16-no-flatten-grads", "bf16"])
def test_sage_params_is_refused_where_fairseq_hands_over_float32_copies(precision, monkeypatch):
    flags, dtype, _ = PRECISIONS[precision]
    model = make_model(dtype)
    cfg = fairseq_config("adam_sage", *flags, "--sage-params", "^hidden")
    with pytest.raises(SystemExit, match=r"^fairseq-sage: error: --sage-params needs parameter names.*"
                                         r"use --memory-efficient-fp16"):
        build_wrapper(cfg, model, monkeypatch)


def test_sage_params_is_refused_for_weights_flattened_by_fully_sharded_data_parallel():
    from fairseq_sage.fairseq.params import sage_param_groups

    class FlattenedLayer(nn.Module):  # how fairscale's FSDP names the one tensor it makes of a layer
        def __init__(self):
            super().__init__()
            self.register_parameter("flat_param_0", nn.Parameter(torch.zeros(10)))

    holder = nn.ModuleDict({"encoder": FlattenedLayer()})
    with pytest.raises(SystemExit, match=r"flattened into one tensor \(encoder.flat_param_0"):
        sage_param_groups(list(holder.parameters()), "encoder")


@pytest.mark.parametrize(
    "flags, sage_prefix",
    [(["--memory-efficient-fp16", "--sage-params", "^decoder"], "decoder."),
     (["--fp16", "--fp16-no-flatten-grads"], "")],
    ids=["memory-efficient-fp16", "fp16-no-flatten-grads"],
)
def test_fairseq_train_in_half_precision_on_cpu(toy_data_bin, tmp_path, flags, sage_prefix):
    """A real fairseq-train run (fairseq's flat --fp16 copy needs CUDA; these two run on CPU)."""
    run_fairseq("train", *train_args(toy_data_bin, tmp_path, "--max-update", "4", "--no-epoch-checkpoints",
                                     *flags))
    checkpoint = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    optimizer = checkpoint["last_optimizer_state"]
    assert optimizer["loss_scale"] > 0
    # fairseq hands the optimizer the model's parameters in order; the checkpoint's model also
    # holds one buffer per encoder and decoder ("version")
    weights = {name: w for name, w in checkpoint["model"].items() if not name.endswith(".version")}
    sage_group, *other_groups = optimizer["param_groups"]
    assert sage_group["sage"] and all(not g["sage"] for g in other_groups)
    chosen = [w for name, w in weights.items() if name.startswith(sage_prefix)]
    assert len(sage_group["params"]) == len(chosen)
    for index, weight in zip(sage_group["params"], chosen):
        state = optimizer["state"][index]
        assert state["step"] == 4
        ema = state["sensitivity_ema"]
        assert ema.dtype == torch.float32 and ema.shape == weight.shape
        assert torch.isfinite(ema).all()
    others = [i for g in other_groups for i in g["params"]]
    assert len(others) == len(weights) - len(chosen)
    assert all("sensitivity_ema" not in optimizer["state"][i] for i in others)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fairseq's flat --fp16 master copy lives on a GPU")
def test_fairseq_train_fp16_on_gpu(toy_data_bin, tmp_path):
    args = [a for a in train_args(toy_data_bin, tmp_path, "--max-update", "6", "--fp16") if a != "--cpu"]
    run_fairseq("train", *args)
    optimizer = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))["last_optimizer_state"]
    (flat_state,) = optimizer["state"].values()  # one flat float32 master copy
    assert flat_state["step"] == 6
    assert flat_state["sensitivity_ema"].dtype == torch.float32
    assert torch.isfinite(flat_state["sensitivity_ema"]).all()
