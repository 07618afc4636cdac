"""End-to-end ``fairseq-train`` speed (words per second) of ``--optimizer adam_sage`` against ``adam``.

A synthetic parallel corpus (random sentences over a fixed vocabulary; the target is the source
reversed) is binarized with ``fairseq-preprocess``, unless a binarized one is given. Each round
trains with adam, then with adam_sage, from the same seed: the k-th ``train_inner`` interval of
the runs holds the same batches, so their ``wps`` make pairs that differ only by the optimizer (and
by the machine's load at the time). The comparison is the median of adam_sage's wps / adam's over
all pairs but the first of each round (which holds start-up costs); an optimizer's own figure is
the median of its intervals' wps.

The runs use one CPU thread by default: with a model this small torch's two-thread operations are
short, and on a machine shared with other processes each one's thread barrier can wait a whole
scheduler time slice, which slows training tenfold at random.
"""

import json
import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "fairseq_sage"

MODELS = {
    "small": [
        "--arch", "transformer", "--share-all-embeddings",
        "--encoder-layers", "2", "--decoder-layers", "2",
        "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
        "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
        "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
    ],
    "tiny": [
        "--arch", "transformer",
        "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    ],
}
"""``small``: 2+2 layers of width 128 (about 1.2M parameters); ``tiny``: for smoke tests."""

ADAM_SAGE = ["--optimizer", "adam_sage", "--adam-betas", "(0.9, 0.98)", "--user-dir", str(USER_DIR)]
OPTIMIZER_FLAGS = {
    "adam": ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)"],
    "adam_sage": ADAM_SAGE + ["--no-sage-diagnostics"],
    "adam_sage +diagnostics": ADAM_SAGE,
}
"""What is compared: adam, adam_sage alone, adam_sage with the statistics of its multipliers
(:mod:`fairseq_sage.optim.diagnostics`) logged at every log interval, as fairseq-train does by default."""

TRAIN_INNER = re.compile(r"\| train_inner \| (\{.*\})")


def write_corpus(folder: Path, sentences: int, vocabulary: int = 1000, seed: int = 0) -> None:
    """train/valid ``.src``/``.tgt`` files: 5-30 random words, the target reversed."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocabulary)]
    for split, size in (("train", sentences), ("valid", 50)):
        source, target = [], []
        for _ in range(size):
            sentence = rng.choices(words, k=rng.randint(5, 30))
            source.append(" ".join(sentence))
            target.append(" ".join(reversed(sentence)))
        (folder / f"{split}.src").write_text("\n".join(source) + "\n")
        (folder / f"{split}.tgt").write_text("\n".join(target) + "\n")


def run_fairseq(tool: str, args: Sequence, threads: Optional[int] = None) -> str:
    """Run ``fairseq-<tool>`` with this Python (on ``threads`` CPU threads if given); its output,
    or RuntimeError with its last lines."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.run([sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-{tool} {' '.join(map(str, args))} failed (exit status "
                           f"{proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def binarize(folder: Path, sentences: int) -> Path:
    """Write and binarize the synthetic corpus in ``folder``; the data-bin directory."""
    write_corpus(folder, sentences)
    run_fairseq("preprocess", [
        "--source-lang", "src", "--target-lang", "tgt", "--trainpref", folder / "train",
        "--validpref", folder / "valid", "--destdir", folder / "data-bin", "--joined-dictionary",
        "--workers", "1",
    ])
    return folder / "data-bin"


def words_per_second(log: str) -> List[float]:
    """The ``wps`` of every ``train_inner`` line of a ``--log-format json`` training log."""
    return [float(json.loads(match)["wps"]) for match in TRAIN_INNER.findall(log)]


def train_wps(
    data_bin: Path, optimizer: str, model: str, updates: int, log_interval: int, device: str, threads: int
) -> List[float]:
    """Train from scratch for ``updates`` updates on ``device``; the wps of each logged interval."""
    log = run_fairseq("train", [
        data_bin, *MODELS[model], *OPTIMIZER_FLAGS[optimizer],
        "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--max-tokens", "1024", "--max-update", updates, "--seed", "1", "--num-workers", "0",
        *(["--cpu"] if device == "cpu" else []),
        "--no-save", "--disable-validation", "--log-format", "json", "--log-interval", log_interval,
        "--no-progress-bar",
        # no background batch-prefetching thread: killed at exit, it makes a run that ends soon after
        # an epoch boundary abort ("terminate called without an active exception")
        "--data-buffer-size", "0",
    ], threads)
    return words_per_second(log)


def compare(
    data_bin: Path, model: str, updates: int, log_interval: int, rounds: int, device: str = "cpu",
    threads: int = 1,
) -> Dict[str, object]:
    """``rounds`` rounds of a run of each of ``OPTIMIZER_FLAGS``. Per optimizer: the wps of each
    run's intervals (the first dropped) and their median; but for adam, the ratios of its wps to
    adam's in paired intervals and their median."""
    intervals: Dict[str, List[List[float]]] = {name: [] for name in OPTIMIZER_FLAGS}
    for _ in range(rounds):
        for name in OPTIMIZER_FLAGS:
            wps = train_wps(data_bin, name, model, updates, log_interval, device, threads)
            if len(wps) < 2:
                raise RuntimeError(f"{name}: {len(wps)} train_inner lines; raise --train-updates "
                                   "or lower the log interval")
            intervals[name].append(wps[1:])
    result: Dict[str, dict] = {}
    for name, runs in intervals.items():
        result[name] = {"wps": statistics.median(w for run in runs for w in run), "runs_wps": runs}
        if name != "adam":
            ratios = [wps / adam for run, adam_run in zip(runs, intervals["adam"])
                      for wps, adam in zip(run, adam_run)]
            result[name].update(paired_ratios=ratios, over_adam=statistics.median(ratios))
    return result
