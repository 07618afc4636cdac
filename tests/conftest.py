"""Shared fixtures: a tiny synthetic parallel corpus binarized by fairseq, and fairseq CLI runners."""

import os
import random
import subprocess
from pathlib import Path

import pytest
import torch

from forked_cli import run_module

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "fairseq_sage"
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"

TINY_TRANSFORMER = [
    "--arch", "transformer",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; benchmarks/gpu_check.sh runs these (pytest -m cuda)")
    # each test worker (pytest-xdist) and the processes it starts get their share of the cores: more
    # threads than cores make torch's threads wait on each other (a 2-core machine ran the suite's
    # fairseq trainings several times slower with 2 workers of 2 threads each)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def run_fairseq(tool: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """Run a fairseq CLI (``train``, ``generate``, ``preprocess``), ``python -m fairseq_cli.TOOL`` in a
    process of its own (tests/forked_cli.py); return its output."""
    proc = run_module(f"fairseq_cli.{tool}", *args)
    if check and proc.returncode != 0:
        raise AssertionError(f"fairseq-{tool} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def write_reversal_corpus(folder: Path, seed: int = 0) -> None:
    """A copy task a tiny model learns in a few dozen updates: target = source reversed, upper-cased."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(24)]
    sizes = {"train": 600, "valid": 40, "test": 40}
    for split, size in sizes.items():
        src, tgt = [], []
        for _ in range(size):
            sentence = [rng.choice(words) for _ in range(rng.randint(3, 8))]
            src.append(" ".join(sentence))
            tgt.append(" ".join(w.upper() for w in reversed(sentence)))
        (folder / f"{split}.src").write_text("\n".join(src) + "\n")
        (folder / f"{split}.tgt").write_text("\n".join(tgt) + "\n")


@pytest.fixture(scope="session")
def toy_data_bin(tmp_path_factory) -> Path:
    """fairseq-preprocess'd reversal corpus (src -> tgt, joined dictionary)."""
    folder = tmp_path_factory.mktemp("toy")
    write_reversal_corpus(folder)
    run_fairseq(
        "preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", folder / "train", "--validpref", folder / "valid", "--testpref", folder / "test",
        "--destdir", folder / "data-bin", "--joined-dictionary", "--workers", "1",
    )
    return folder / "data-bin"


def train_args(data_bin: Path, save_dir: Path, *extra) -> list:
    """fairseq-train arguments for the tiny transformer on ``data_bin`` with adam_sage, CPU, seed 1."""
    return [
        data_bin, "--user-dir", USER_DIR, *TINY_TRANSFORMER,
        "--optimizer", "adam_sage", "--adam-betas", "(0.9, 0.98)", "--sage-beta0", "0.8",
        "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--warmup-init-lr", "1e-7", "--max-tokens", "400", "--seed", "1", "--cpu",
        "--save-dir", save_dir, "--no-progress-bar", "--log-format", "simple", "--log-interval", "1",
        # batches collated in the main process, and no prefetching thread: fairseq's daemon thread,
        # stopped by the interpreter's exit while it collates, can abort a run that ends soon after an
        # epoch boundary ("terminate called without an active exception"; docs/reliability.md)
        "--num-workers", "0", "--data-buffer-size", "0", *extra,
    ]


@pytest.fixture(scope="session")
def trained_toy(toy_data_bin, tmp_path_factory) -> Path:
    """The save folder of a tiny adam_sage transformer trained until it translates the toy corpus (100
    updates at lr 2e-2, no dropout; BLEU about 20): checkpoint_last.pt and every epoch's checkpointN.pt.
    Trained once per test worker for the tests that need a trained model; they copy what they change."""
    save_dir = tmp_path_factory.mktemp("trained_toy")
    run_fairseq("train", *train_args(toy_data_bin, save_dir, "--max-update", "100", "--max-tokens", "1000",
                                     "--lr", "2e-2", "--dropout", "0", "--disable-validation", "--log-interval", "50"))
    return save_dir


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder in which this process cannot create files: a read-only one; as root, for whom
    permissions do not bind, /sys (the kernel refuses new files there to everyone)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.touch()
    except PermissionError:
        yield folder
    else:
        probe.unlink()
        yield Path("/sys")
    folder.chmod(0o755)


# The real Multi30k, cut to a few lines per split: built once for every test that takes it.
REAL_SUBSET_LINES = {"train": 300, "val": 16, "test_2016_flickr": 8, "test_2017_flickr": 8}


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory) -> Path:
    """The first REAL_SUBSET_LINES lines of each split of the real Multi30k (MULTI30K), gzipped as
    there, with their SHA256SUMS (pass it as MULTI30K_SHA256SUMS to recipes/multi30k)."""
    import gzip
    import hashlib
    from itertools import islice

    if not MULTI30K.is_dir():
        pytest.skip(f"real Multi30k folder {MULTI30K} not present")
    folder = tmp_path_factory.mktemp("multi30k_subset")
    sums = ""
    for split, count in REAL_SUBSET_LINES.items():
        for lang in ("de", "en"):
            name = f"{split}.{lang}.gz"
            with gzip.open(MULTI30K / name, "rt", encoding="utf-8") as source:
                lines = list(islice(source, count))
            with gzip.open(folder / name, "wt", encoding="utf-8") as out:
                out.writelines(lines)
            sums += f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
    (folder / "SHA256SUMS").write_text(sums)
    return folder
