"""What the study tests share: running run_study.sh, a subset of the real Multi30k, fabricated run folders."""

import gzip
import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import MULTI30K, REPO, TINY_TRANSFORMER

SCRIPT = REPO / "studies" / "multi30k" / "run_study.sh"
TINY_FLAGS = [*TINY_TRANSFORMER[TINY_TRANSFORMER.index("--arch") + 2 :], "--num-workers", "0"]
SUBSET_LINES = {"train": 300, "val": 16, "test_2016_flickr": 8, "test_2017_flickr": 8}
needs_real_data = pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"real Multi30k folder {MULTI30K} not present")


def run_study(*args, env=None):
    # one thread: a tiny model gains nothing from two, and threads waiting on a busy CPU cost much
    environment = {**os.environ, "PYTHON": sys.executable, "WORKERS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd="/", env=environment,
                          capture_output=True, text=True)  # fmt: skip


def check_ok(process):
    assert process.returncode == 0, f"{process.stdout[-4000:]}\n{process.stderr[-4000:]}"
    return process


def bleu(path):
    return json.loads(path.read_text())["score"]


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory):
    """The first lines of each split of the real Multi30k, gzipped, with their SHA256SUMS."""
    folder = tmp_path_factory.mktemp("multi30k")
    sums = ""
    for split, count in SUBSET_LINES.items():
        for lang in ("de", "en"):
            name = f"{split}.{lang}.gz"
            with gzip.open(MULTI30K / name, "rt", encoding="utf-8") as source:
                lines = [next(source) for _ in range(count)]
            with gzip.open(folder / name, "wt", encoding="utf-8") as out:
                out.writelines(lines)
            sums += f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
    (folder / "SHA256SUMS").write_text(sums)
    return folder


def fabricate_study(workdir, valid_bleu, test_bleu, seeds="1 2 3"):
    """A WORKDIR whose runs hold a train.log and sacreBLEU files with the given scores.

    ``valid_bleu``: {run name: (BLEU, best valid loss)}; ``test_bleu``: {run name: (test2016, test2017)}."""
    settings = {"ADAM_LRS": "1e-3 2e-3", "SAGE_LRS": "2e-3 5e-3", "SAGE_BETA0S": "0.6 0.9", "SEEDS": seeds,
                "MAX_UPDATE": "600", "WARMUP_UPDATES": "200", "MAX_TOKENS": "2048", "SAVE_INTERVAL_UPDATES": "100",
                "LOG_INTERVAL": "25", "MAX_TRAIN_LINES": "all", "MAX_TEST_LINES": "all", "SPM_VOCAB_SIZE": "8000",
                "PRUNE_LEVELS": "0,10", "PRUNE_SUBSET": "test", "PRUNE_BATCHES": "8", "TRAIN_FLAGS": "",
                "DATA": "", "OVERRIDDEN": ""}  # fmt: skip
    workdir.mkdir(parents=True)
    (workdir / "study.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    for name, (score, loss) in valid_bleu.items():
        write_run(workdir, name, loss, {"valid": score})
    for name, (score2016, score2017) in test_bleu.items():
        write_run(workdir, name, 5.0, {"test2016": score2016, "test2017": score2017})


def write_run(workdir, name, loss, scores):
    optimizer = name.split("-")[0]
    save_dir = workdir / "runs" / name / "checkpoints" / optimizer
    eval_dir = workdir / "runs" / name / "eval" / optimizer
    save_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    if not (save_dir / "train.log").exists():
        (save_dir / "train.log").write_text(
            f"2026 | INFO | valid | epoch 001 | valid on 'valid' subset | loss {loss + 1} | num_updates 300\n"
            f"2026 | INFO | valid | epoch 002 | valid on 'valid' subset | loss {loss} | num_updates 600\n")
        (save_dir / "train.done").write_text("fairseq-train ...\n")
    for subset, score in scores.items():
        (eval_dir / f"{subset}.sacrebleu.json").write_text(json.dumps({"score": score, "signature": "nrefs:1|test"}))
