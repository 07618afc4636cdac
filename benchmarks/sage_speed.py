"""How much SAGE costs: optimizer step times, optimizer-state memory and fairseq-train words/s.

Run from the repository root:

    python -m benchmarks.sage_speed --out benchmarks/sage_speed.json

For the parameter shapes of fairseq's ``transformer_iwslt_de_en`` and ``transformer_wmt_en_de`` it
times (median of repeated steps after warm-up) fairseq's ``adam``, torch's AdamW with
``fused=True`` and adam_sage on each implementation, prints each time with its ratios to both and
the optimizer-state bytes per parameter; then it measures ``fairseq-train`` words per second of
adam_sage against adam on a small transformer. adam_sage is configured as ``fairseq-train`` runs
it (``check_finite=False``: fairseq's trainer checks the gradients itself); the row
``adam_sage auto +check`` shows the torch default, which reads every gradient once more to skip
updates with NaN/inf. All figures, with the machine's description and load, go to ``--out``.
"""

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import step_memory, step_timing, train_speed
from benchmarks.optimizers import BENCHMARKED_IMPLEMENTATIONS, optimizer_factories
from benchmarks.parameter_shapes import ARCHITECTURES, parameter_shapes
from fairseq_sage.files import write_atomic
from fairseq_sage.quiet import quiet_entry


def machine() -> dict:
    """What the figures were measured on."""
    model = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return {
        "cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def measure_steps(arch: str, args) -> dict:
    shapes = parameter_shapes(arch)
    count = sum(math.prod(s) for s in shapes)
    times = step_timing.time_steps(optimizer_factories(args.impls, args.device), shapes,
                                   args.warmup, args.repeats, args.device)
    adam, fused = times["fairseq adam"].median_step_s, times["torch AdamW fused"].median_step_s
    rows = {
        name: {
            "median_step_ms": t.median_step_s * 1e3,
            "x_fairseq_adam": t.median_step_s / adam,
            "x_fused_adamw": t.median_step_s / fused,
            "first_step_s": t.first_step_s,
            "state_bytes_per_parameter": t.state_bytes / count,
            "steps_ms": [s * 1e3 for s in t.steps_s],
        }
        for name, t in times.items()
    }
    if args.memory and args.device == "cpu":
        for name, temporary in step_memory.measure(list(rows), arch).items():
            rows[name]["step_temporary_bytes"] = temporary
    return {"parameters": count, "tensors": len(shapes), "optimizers": rows}


def print_steps(arch: str, result: dict, device: str) -> None:
    print(f"\n{arch}: {result['parameters']:,} parameters in {result['tensors']} tensors, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'optimizer':24s}{'median ms':>11s}{'x adam':>9s}{'x fused':>9s}{'first step s':>14s}"
          f"{'state B/param':>15s}{'step temp MB':>14s}")
    for name, row in result["optimizers"].items():
        temporary = row.get("step_temporary_bytes")
        print(f"{name:24s}{row['median_step_ms']:11.2f}{row['x_fairseq_adam']:9.2f}"
              f"{row['x_fused_adamw']:9.2f}{row['first_step_s']:14.2f}{row['state_bytes_per_parameter']:15.2f}"
              f"{'-' if temporary is None else f'{temporary / 2**20:.1f}':>14s}")


def print_training(result: dict, args) -> None:
    print(f"\nfairseq-train, {args.train_model} transformer, {args.train_threads} CPU thread(s), "
          f"{args.train_rounds} rounds, words/s (median), ratio to adam (median over paired intervals):")
    for name, row in result.items():
        ratio = f"{row['over_adam']:9.3f}" if "over_adam" in row else f"{1:9.3f}"
        print(f"{name:24s}{row['wps']:9.0f}{ratio}")


def measure_training(args) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        data_bin = args.data_bin or train_speed.binarize(Path(folder), args.train_sentences)
        result = train_speed.compare(Path(data_bin), args.train_model, args.train_updates,
                                     args.train_log_interval, args.train_rounds, args.device,
                                     args.train_threads)
    return result


def write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES),
                        choices=[*ARCHITECTURES, "flat", "tiny"], help="parameter shapes to time")
    parser.add_argument("--impls", nargs="+", default=list(BENCHMARKED_IMPLEMENTATIONS), choices=BENCHMARKED_IMPLEMENTATIONS,
                        help="adam_sage implementations to time")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads for the step timings (default: torch's, "
                        "one per core)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per optimizer")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per optimizer")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="do not measure the steps' temporary memory (one process per optimizer)")
    parser.add_argument("--skip-train", action="store_true", help="no fairseq-train measurement")
    parser.add_argument("--train-model", default="small", choices=sorted(train_speed.MODELS))
    parser.add_argument("--train-sentences", type=int, default=4000, help="synthetic training sentences")
    parser.add_argument("--train-updates", type=int, default=40, help="updates per fairseq-train run")
    parser.add_argument("--train-log-interval", type=int, default=5)
    parser.add_argument("--train-rounds", type=int, default=4, help="runs of each optimizer")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="CPU threads of the fairseq-train runs (see benchmarks/train_speed.py)")
    parser.add_argument("--data-bin", help="a binarized src-tgt corpus to train on instead of a synthetic one")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/sage_speed.json"), help="JSON output")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    if args.memory and not step_memory.available():
        args.memory = False
    if args.data_bin and not Path(args.data_bin, "dict.src.txt").is_file():
        parser.error(f"--data-bin {args.data_bin}: no dict.src.txt there; give a fairseq-preprocess'd "
                     "src-tgt directory")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.getLogger("filelock").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "out"}, "steps": {}}
    for arch in args.archs:
        results["steps"][arch] = measure_steps(arch, args)
        print_steps(arch, results["steps"][arch], args.device)
    if not args.skip_train:
        start = time.perf_counter()
        results["train"] = measure_training(args)
        results["train_seconds"] = time.perf_counter() - start
        print_training(results["train"], args)
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_json_atomically(args.out, results)
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    quiet_entry()
    main()
