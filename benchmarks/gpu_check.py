"""Every claim that needs a GPU, checked in one run on one GPU (under 8 minutes); one JSON of results.

    bash benchmarks/gpu_check.sh [--dry-run] [--data DIR] [--workdir DIR] [--out FILE]

1. ``cuda_tests``: the test suite's CUDA tests (``pytest -m cuda tests``);
2. ``compiled_vs_reference``: adam_sage's compiled path (Triton kernels) against the reference, 3
   updates on the parameter shapes of ``transformer_iwslt_de_en``, float32 and bfloat16 weights;
3. ``step_times``: adam_sage against torch's fused AdamW and fairseq's adam on CUDA, with ratios;
4. ``fairseq_fp16``: 200 updates of ``fairseq-train --fp16`` and of ``--memory-efficient-fp16`` with
   adam_sage on Multi30k (the quickstart's model and data): the loss falls, the loss scale does
   not keep overflowing, and ``fairseq-generate`` loads the checkpoint and translates;
5. ``fsdp``: the same training on 2 GPUs with ``--ddp-backend fully_sharded``, where 2 GPUs exist.

``--dry-run`` runs the same steps on the CPU so that the script cannot rot (the test suite runs it):
the CUDA tests are only collected, the fast path compared is ``foreach`` (what runs without a GPU),
the shapes are a handful of small tensors, the training takes 4 updates of fp32 on a 300-sentence
subset (once: without the precision flags, the ``--memory-efficient-fp16`` run would repeat the
``--fp16`` one), and FSDP is skipped. A check that fails is recorded with its error and the exit status is 1.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List

import torch

from benchmarks import step_timing
from benchmarks.parameter_shapes import parameter_shapes
from benchmarks.optimizers import HYPER, optimizer_factories
from benchmarks.sage_speed import machine, write_json_atomically
from fairseq_sage.quiet import quiet_entry

REPO = Path(__file__).resolve().parents[1]
OVERFLOW = re.compile(r"gradient overflow detected")
INNER_LOSS = re.compile(r"\| train_inner \| .* loss=([\d.]+),.* num_updates=(\d+)")
QUICKSTART_MODEL = [
    "--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "128", "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "512",
    "--decoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
    "--dropout", "0.2",
]  # fmt: skip
"""recipes/multi30k/train.sh's model."""


class CheckFailed(AssertionError):
    """A claim the GPU run disproved; the message says which."""


def run(command: List, log: Path, env: Dict[str, str] = None) -> str:
    """Run ``command`` (its output to ``log``); return the output; CheckFailed if it fails."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([str(c) for c in command], cwd=REPO, env=environment, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise CheckFailed(f"{' '.join(map(str, command[:4]))} ... exited with {proc.returncode}; see {log}")
    return proc.stdout + proc.stderr


def cuda_tests(args) -> dict:
    mode = ["--collect-only"] if args.dry_run else []
    output = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *mode, "tests"],
                 args.workdir / "cuda_tests.log")
    tail = output.strip().splitlines()[-1]
    if not args.dry_run and (" failed" in tail or " passed" not in tail):
        raise CheckFailed(f"CUDA tests: {tail}")
    return {"summary": tail}


def tolerance(dtype: torch.dtype) -> dict:
    """float32 rounding for float32 weights; one rounding step of the weight dtype otherwise."""
    if dtype == torch.float32:
        return dict(rtol=2e-5, atol=2e-6)
    return dict(rtol=2 * torch.finfo(dtype).eps, atol=1e-5)


def compiled_vs_reference(args) -> dict:
    from fairseq_sage import AdamSAGE

    shapes = parameter_shapes("tiny" if args.dry_run else "transformer_iwslt_de_en")
    impl = "foreach" if args.dry_run else "compiled"
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        runs = {}
        for name in ("reference", impl):
            params = [p.detach().to(dtype).requires_grad_() for p in step_timing.make_parameters(shapes, args.device)]
            optimizer = AdamSAGE(params, impl=name, check_finite=False, beta0=0.8, **HYPER)
            generator = torch.Generator(args.device).manual_seed(1)
            for _ in range(3):
                for p in params:
                    p.grad = (torch.randn(p.shape, generator=generator, device=args.device) * 1e-3).to(dtype)
                optimizer.step()
            runs[name] = (params, optimizer)
        (reference, reference_optimizer), (fast, fast_optimizer) = runs["reference"], runs[impl]
        worst = 0.0
        for p, q in zip(reference, fast):
            torch.testing.assert_close(q, p, **tolerance(dtype))
            worst = max(worst, (q.float() - p.float()).abs().max().item())
            for key in ("exp_avg", "exp_avg_sq", "sensitivity_ema"):
                torch.testing.assert_close(fast_optimizer.state[q][key], reference_optimizer.state[p][key],
                                           **tolerance(torch.float32))
        results[str(dtype).replace("torch.", "")] = {"impl": impl, "tensors": len(shapes),
                                                     "max_abs_weight_difference": worst}
    return results


def step_times(args) -> dict:
    shapes = parameter_shapes("tiny" if args.dry_run else "transformer_iwslt_de_en")
    impls = ["foreach"] if args.dry_run else ["foreach", "compiled"]
    times = step_timing.time_steps(optimizer_factories(impls, args.device), shapes, warmup=3,
                                   repeats=3 if args.dry_run else 30, device=args.device)
    adam, fused = times["fairseq adam"].median_step_s, times["torch AdamW fused"].median_step_s
    rows = {name: {"median_step_ms": t.median_step_s * 1e3, "x_fairseq_adam": t.median_step_s / adam,
                   "x_fused_adamw": t.median_step_s / fused, "first_step_s": t.first_step_s}
            for name, t in times.items()}  # fmt: skip
    for name, row in rows.items():
        print(f"  {name:24s}{row['median_step_ms']:9.2f} ms {row['x_fairseq_adam']:6.2f}x adam "
              f"{row['x_fused_adamw']:6.2f}x fused AdamW")
    return rows


def prepare_multi30k(args) -> Path:
    workdir = args.workdir / "multi30k"
    subset = {"MAX_TRAIN_LINES": "300", "MAX_VALID_LINES": "40", "MAX_TEST_LINES": "20",
              "SPM_VOCAB_SIZE": "300"} if args.dry_run else {}  # fmt: skip
    run(["bash", REPO / "recipes" / "multi30k" / "prepare.sh", *(["--data", args.data] if args.data else []), workdir],
        args.workdir / "prepare.log", env={"PYTHON": sys.executable, **subset})
    return workdir / "data-bin"


def train_and_generate(args, data_bin: Path, name: str, flags: List[str], world_size: int = 1) -> dict:
    save_dir = args.workdir / name
    updates = 4 if args.dry_run else 200
    precision = [] if args.dry_run else flags
    device = ["--cpu"] if args.dry_run else ["--distributed-world-size", world_size]
    log = run([sys.executable, REPO / "recipes" / "quiet.py", "fairseq_cli.train", data_bin,
               "--user-dir", REPO / "fairseq_sage", *QUICKSTART_MODEL, *precision, *device,
               "--optimizer", "adam_sage", "--lr", "5e-3", "--adam-betas", "(0.9, 0.98)", "--sage-beta0", "0.8",
               "--lr-scheduler", "inverse_sqrt", "--warmup-updates", updates // 4, "--warmup-init-lr", "1e-7",
               "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
               "--max-tokens", "2048", "--max-update", updates, "--seed", "1", "--save-dir", save_dir,
               "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", 1 if args.dry_run else 20],
              args.workdir / f"{name}.train.log")  # fmt: skip
    losses = [(int(u), float(loss)) for loss, u in INNER_LOSS.findall(log)]
    overflows = len(OVERFLOW.findall(log))
    if not losses or losses[-1][0] != updates:
        raise CheckFailed(f"{name}: the run did not reach {updates} updates (last logged: {losses[-1:]})")
    if not losses[-1][1] < losses[0][1]:
        raise CheckFailed(f"{name}: the loss did not fall ({losses[0][1]} -> {losses[-1][1]})")
    if overflows > 10:
        raise CheckFailed(f"{name}: {overflows} gradient overflows in {updates} updates")
    generated = run([sys.executable, REPO / "recipes" / "quiet.py", "fairseq_cli.generate", data_bin,
                     "--user-dir", REPO / "fairseq_sage", "--path", save_dir / "checkpoint_last.pt",
                     "--gen-subset", "test", "--beam", "5", "--batch-size", "64", "--required-batch-size-multiple", "1", *(["--cpu"] if args.dry_run else [])],
                    args.workdir / f"{name}.generate.log")  # fmt: skip
    hypotheses = sum(line.startswith("H-") for line in generated.splitlines())
    if hypotheses == 0:
        raise CheckFailed(f"{name}: fairseq-generate wrote no hypothesis")
    return {"updates": updates, "first_loss": losses[0][1], "last_loss": losses[-1][1], "overflows": overflows,
            "hypotheses": hypotheses, "flags": precision}


def fairseq_fp16(args) -> dict:
    data_bin = prepare_multi30k(args)
    results = {"fp16": train_and_generate(args, data_bin, "fp16", ["--fp16"])}
    if args.dry_run:  # the CPU trains in fp32: the same run again
        results["memory_efficient_fp16"] = {"skipped": "--dry-run: in fp32 on the CPU, the same run as fp16"}
    else:
        results["memory_efficient_fp16"] = train_and_generate(args, data_bin, "memory_efficient_fp16",
                                                              ["--memory-efficient-fp16"])
    return results


def fsdp(args) -> dict:
    gpus = torch.cuda.device_count()
    if args.dry_run or gpus < 2:
        return {"skipped": f"needs 2 GPUs, this machine has {gpus}"}
    return train_and_generate(args, args.workdir / "multi30k" / "data-bin", "fsdp",
                              ["--fp16", "--ddp-backend", "fully_sharded"], world_size=2)


CHECKS: Dict[str, Callable[[argparse.Namespace], dict]] = {
    "cuda_tests": cuda_tests,
    "compiled_vs_reference": compiled_vs_reference,
    "step_times": step_times,
    "fairseq_fp16": fairseq_fp16,
    "fsdp": fsdp,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, small sizes")
    parser.add_argument("--data", type=Path, help="raw Multi30k folder (default: recipes/multi30k's)")
    parser.add_argument("--workdir", type=Path, help="where data, runs and logs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu_check.json"), help="the JSON of results")
    args = parser.parse_args(argv)
    args.device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here; run on a GPU machine, or pass --dry-run")
    if args.data and not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as temporary:
        args.workdir = (args.workdir or Path(temporary)).resolve()
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = {"dry_run": args.dry_run, "machine": machine(), "checks": {}}
        for name, check in CHECKS.items():
            start = time.perf_counter()
            print(f"{name} ...", flush=True)
            try:
                result = {"ok": True, **check(args)}
            except Exception as error:  # recorded, and the other checks still run
                result = {"ok": False, "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc(limit=3)}
            result["seconds"] = round(time.perf_counter() - start, 1)
            results["checks"][name] = result
            print(f"{name}: {'ok' if result['ok'] else 'FAILED: ' + result['error']} ({result['seconds']} s)", flush=True)
    write_json_atomically(args.out, results)
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in results["checks"].values()) else 1


if __name__ == "__main__":
    quiet_entry()
    sys.exit(main())
