"""What several test files share: readers of fairseq's console output, the environment of a
subprocess with torch's own torch.load default, the SAGE multiplier written from its equations,
gradient sequences, and ``--optimizer sage`` built from flags."""

import argparse
import os
import re

import torch

from conftest import train_args

TRAIN_LINE = re.compile(r"\| train_inner \| .*?loss=([\d.]+).*?num_updates=(\d+), lr=([\d.e-]+)")
"""A ``train_inner`` line of ``--log-format simple``: its loss, num_updates and lr."""
BLEU_LINE = re.compile(r"^Generate test with beam=5: BLEU4 = ([\d.]+),", re.M)
"""fairseq-generate's closing BLEU line (beam 5)."""


def train_log_of_text(text: str) -> list:
    """(num_updates, loss, lr) of every train_inner line of a fairseq-train log."""
    return [(int(u), float(loss), float(lr)) for loss, u, lr in TRAIN_LINE.findall(text)]


def train_log(proc) -> list:
    """(num_updates, loss, lr) of every train_inner line of a finished fairseq-train process."""
    return train_log_of_text(proc.stdout + proc.stderr)


def torch_default_environment(extra=None) -> dict:
    """This process's environment without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (so that torch.load keeps its
    own default), with ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    return dict(env, **(extra or {}))


def reference_multiplier(theta, grad, ema, t, beta0, eps):
    """(U + ε)/(Ī_c + ε) with I = |θ g|, Ī = β0 Ī + (1 − β0) I, Ī_c = Ī/(1 − β0^t), U = |I − Ī_c|."""
    sensitivity = (theta * grad).abs()
    ema = beta0 * ema + (1 - beta0) * sensitivity
    corrected = ema / (1 - beta0**t)
    variation = (sensitivity - corrected).abs()
    return (variation + eps) / (corrected + eps), ema


def gradient_sequence(shape, dtype, steps=25, seed=0):
    """``steps`` gradients of ``shape`` and ``dtype``, drawn from N(0, 1) with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for _ in range(steps)]


def run_optimizer(optimizer, params, grads_per_param):
    """One ``optimizer.step()`` per gradient, each parameter taking its own sequence in turn."""
    for grads in zip(*grads_per_param):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()


def sage_train_args(data_bin, save_dir, *extra):
    """``train_args`` with ``--optimizer sage`` in place of adam_sage and its --adam-betas."""
    args = train_args(data_bin, save_dir, *extra)
    start = args.index("adam_sage")
    return args[:start] + ["sage"] + args[start + 3:]


def sage_optimizer_config(*flags) -> argparse.Namespace:
    """The optimizer config fairseq-train makes of these flags (a Namespace: sage has no dataclass)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_sage.fairseq  # noqa: F401  (registers the plugin in this process)

    args = options.parse_args_and_arch(options.get_training_parser(), [
        "data-bin", "--arch", "transformer", "--optimizer", "sage", "--lr", "0.01", *flags])
    return convert_namespace_to_omegaconf(args).optimizer


def build_sage_optimizer(params, *flags):
    """fairseq's ``--optimizer sage`` optimizer over ``params``, built from these flags."""
    from fairseq import optim

    return optim.build_optimizer(sage_optimizer_config(*flags), params)
