"""What ``SAGE(optimizer)`` costs over its base optimizer: step time and peak step memory.

Run from the repository root:

    python -m benchmarks.wrapper_overhead

For the parameter shapes of fairseq's ``transformer_iwslt_de_en`` (default ``--arch``) it times
torch's Adafactor and Adam against SAGE wrapped around each, with the fused kernel's modulation
(``impl="auto"``, the default on CPU) and with foreach ops (``impl="foreach"``), and AdamSAGE beside
Adam (median of ``--repeats`` steps after warm-up, the optimizers taking turns,
:mod:`benchmarks.step_timing`), and measures, each in a fresh
process, how far the peak resident memory of three steps rises above what was resident before them
(:mod:`benchmarks.step_memory`): the step's temporaries, which for the wrapper include its one copy
of the weights. It prints each figure with its ratio to the base optimizer, and the optimizer-state
bytes per parameter (the wrapper adds Ī, 4 bytes).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict

import torch

from benchmarks import step_memory, step_timing
from benchmarks.parameter_shapes import parameter_shapes
from fairseq_sage.quiet import quiet_entry

BASES = {
    "Adafactor": lambda params: torch.optim.Adafactor(params, lr=1e-2, weight_decay=1e-4),
    "Adam": lambda params: torch.optim.Adam(params, lr=5e-4, betas=(0.9, 0.98)),
}


def optimizer_factories() -> Dict[str, step_timing.OptimizerFactory]:
    """Each base optimizer, SAGE over it with each modulation, and AdamSAGE (configured as
    fairseq-train runs them: no NaN check)."""
    from fairseq_sage import SAGE, AdamSAGE

    factories = {}
    for name, base in BASES.items():
        factories[name] = base
        for impl, label in (("auto", ""), ("foreach", " foreach")):
            factories[f"SAGE({name}){label}"] = (lambda base, impl: lambda params: SAGE(
                base(params), check_finite=False, impl=impl))(base, impl)
    factories["AdamSAGE"] = lambda params: AdamSAGE(params, lr=5e-4, betas=(0.9, 0.98), check_finite=False)
    return factories


def base_of(name: str) -> str:
    """The base optimizer a row is compared with."""
    if name == "AdamSAGE":
        return "Adam"
    return name[len("SAGE("):name.index(")")] if name.startswith("SAGE(") else name


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The base optimizer's state, plus the wrapper's where ``optimizer`` is one."""
    inner = getattr(optimizer, "optimizer", None)
    return step_timing.state_bytes(optimizer) + (step_timing.state_bytes(inner) if inner is not None else 0)


def temporary_bytes_here(name: str, arch: str) -> int:
    """Peak resident memory of three steps of ``name`` above what was resident before them."""
    params = step_timing.make_parameters(parameter_shapes(arch), "cpu")
    return step_memory.step_temporaries(optimizer_factories()[name](params).step)


def temporary_bytes(name: str, arch: str) -> int:
    """:func:`temporary_bytes_here` in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.wrapper_overhead", "--memory-of", name, "--arch", arch],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env=step_memory.child_environment())
    if proc.returncode != 0:
        raise RuntimeError(f"memory of {name} on {arch} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["temporary_bytes"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="transformer_iwslt_de_en", help="parameter shapes (or tiny, flat)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # the child process of temporary_bytes
    args = parser.parse_args(argv)
    if args.memory_of:
        print(json.dumps({"temporary_bytes": temporary_bytes_here(args.memory_of, args.arch)}))
        return
    shapes = parameter_shapes(args.arch)
    count = sum(torch.Size(s).numel() for s in shapes)
    factories = optimizer_factories()
    times = step_timing.time_steps(factories, shapes, args.warmup, args.repeats)
    params = step_timing.make_parameters(shapes, "cpu")
    states = {}
    for name, factory in factories.items():
        optimizer = factory(params)
        optimizer.step()
        states[name] = state_bytes(optimizer) / count
    memory = {name: temporary_bytes(name, args.arch) for name in factories} if step_memory.available() else {}
    print(f"{args.arch}: {count / 1e6:.1f}M parameters in {len(shapes)} tensors, {torch.get_num_threads()} threads")
    print("| optimizer | median step (ms) | × base | state bytes / parameter | step temporaries (MB) | × base |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in factories:
        base = base_of(name)
        time_ratio = times[name].median_step_s / times[base].median_step_s
        mb = memory.get(name, float("nan")) / 1e6
        memory_ratio = memory[name] / memory[base] if memory.get(base) else float("nan")
        print(f"| {name} | {times[name].median_step_s * 1e3:.1f} | {time_ratio:.2f} | {states[name]:.2f} "
              f"| {mb:.1f} | {memory_ratio:.2f} |")


if __name__ == "__main__":
    quiet_entry()
    main()
