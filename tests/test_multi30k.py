"""recipes/multi30k: the quickstart pipeline end to end, on a synthetic folder and on the real data.

The synthetic test always runs (a folder in Multi30k's layout: gzipped raw text and its
SHA256SUMS). The real-data test runs the same pipeline on a small subset of
../shared/data/multi30k when that folder exists. Both use a tiny transformer and a few updates;
the full-size run is `bash recipes/multi30k/run.sh` (see its README).
"""

import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MULTI30K, REPO, TINY_TRANSFORMER
from forked_cli import python_shim

RECIPE = REPO / "recipes" / "multi30k"
SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")
FILES = [f"{split}.{lang}.gz" for split in SPLITS for lang in ("de", "en")]
# the tiny sizes, keeping the recipe's own architecture (transformer, shared embeddings)
TINY_SIZES = TINY_TRANSFORMER[TINY_TRANSFORMER.index("--arch") + 2 :]
TINY_RUN = {"MAX_UPDATE": "12", "WARMUP_UPDATES": "4", "MAX_TOKENS": "1024"}
GERMAN_ENGLISH = {
    "ein": "a", "hund": "dog", "mann": "man", "kind": "child", "läuft": "runs",
    "spielt": "plays", "sitzt": "sits", "im": "in the", "park": "park", "schnee": "snow",
    "auf": "on", "der": "the", "straße": "street", "rote": "red", "kleine": "small",
}  # fmt: skip


def write_synthetic_multi30k(folder, seed=0):
    """Gzipped German/English caption pairs in Multi30k's file layout, with a SHA256SUMS file."""
    rng = random.Random(seed)
    sizes = {"train": 300, "val": 20, "test_2016_flickr": 12, "test_2017_flickr": 10}
    folder.mkdir(parents=True)
    words = sorted(GERMAN_ENGLISH)
    for split, size in sizes.items():
        german, english = [], []
        for _ in range(size):
            sentence = [rng.choice(words) for _ in range(rng.randint(3, 8))]
            german.append(" ".join(sentence).capitalize() + ".")
            english.append(" ".join(GERMAN_ENGLISH[w] for w in sentence).capitalize() + ".")
        for lang, lines in (("de", german), ("en", english)):
            with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
    sums = "".join(
        f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n" for name in FILES
    )
    (folder / "SHA256SUMS").write_text(sums)
    return folder


def run_script(script, *args, env=None):
    environment = {**os.environ, "PYTHON": str(python_shim()), "WORKERS": "1", **(env or {})}  # its Python commands forked
    return subprocess.run(
        ["bash", str(RECIPE / script), *map(str, args)],
        cwd="/", env=environment, capture_output=True, text=True,
    )  # fmt: skip


def check_ok(process):
    assert process.returncode == 0, f"{process.stdout[-4000:]}\n{process.stderr[-4000:]}"
    return process


def check_table(workdir, optimizers):
    """results.json and results.md hold one row per optimizer with BLEU numbers that parse."""
    rows = json.loads((workdir / "results.json").read_text())
    assert [row["optimizer"] for row in rows] == optimizers
    for row in rows:
        for test in ("test2016", "test2017"):
            assert 0.0 <= row[f"bleu_{test}"] <= 100.0
            score = json.loads((workdir / "eval" / row["optimizer"] / f"{test}.sacrebleu.json").read_text())
            assert row[f"bleu_{test}"] == score["score"]
        assert row["updates"] == int(TINY_RUN["MAX_UPDATE"])
        assert row["best_valid_loss"] > 0 and row["train_wall_seconds"] > 0
        assert row["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    markdown = (workdir / "results.md").read_text()
    assert "| optimizer | BLEU test2016 | BLEU test2017 | best valid loss (bits) |" in markdown
    for optimizer in optimizers:
        row = re.search(rf"^\| {optimizer} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| (\d+) \|$", markdown, re.M)
        assert row, markdown
        assert float(row.group(1)) == pytest.approx(
            next(r["bleu_test2016"] for r in rows if r["optimizer"] == optimizer), abs=0.005
        )
    return rows


def test_quickstart_on_a_synthetic_folder_and_rerun(tmp_path):
    data = write_synthetic_multi30k(tmp_path / "multi30k")
    workdir = tmp_path / "work"
    env = {**TINY_RUN, "OPTIMIZERS": "adam_sage", "SPM_VOCAB_SIZE": "60",
           "MULTI30K_SHA256SUMS": str(data / "SHA256SUMS")}  # fmt: skip
    first = check_ok(run_script("run.sh", "--data", data, workdir, "--", *TINY_SIZES, env=env))
    assert f"fetch (source={data})" in first.stdout
    log = workdir / "checkpoints" / "adam_sage" / "train.log"
    assert f"training adam_sage, log: {log}\n" in first.stdout  # fairseq's output goes to its log
    assert "valid on 'valid' subset" in log.read_text() and "valid on" not in first.stdout
    assert "| adam_sage |" in first.stdout
    assert "Warning" not in first.stdout + first.stderr  # fairseq's dependencies' deprecations are silenced
    curves = workdir / "learning_curves.png"
    assert f"learning curves: {curves}" in first.stdout
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = check_table(workdir, ["adam_sage"])
    assert [len((workdir / "eval" / "adam_sage" / f"{t}.hyp").read_text().splitlines())
            for t in ("test2016", "test2017")] == [12, 10]  # fmt: skip
    # the hypotheses are decoded from sentencepiece pieces to plain text
    assert "▁" not in (workdir / "eval" / "adam_sage" / "test2016.hyp").read_text()

    again = check_ok(run_script("run.sh", "--data", data, workdir, "--", *TINY_SIZES, env=env))
    for step in ("fetch", "decompress", "sentencepiece", "encode", "binarize"):
        assert f"skip {step}: already done" in again.stdout
    assert "skip training adam_sage: already done" in again.stdout
    assert "skip adam_sage test2016" in again.stdout and "skip adam_sage test2017" in again.stdout
    assert json.loads((workdir / "results.json").read_text()) == rows

    # other data in the same WORKDIR: the data steps are redone, the old checkpoints refused
    changed = run_script("run.sh", "--data", data, workdir, "--", *TINY_SIZES,
                         env={**env, "MAX_TRAIN_LINES": "200"})
    assert changed.returncode == 1
    assert "decompress (max_train_lines=200 " in changed.stdout
    assert changed.stderr.strip().splitlines()[-1].startswith(
        f"error: {workdir}/checkpoints/adam_sage was trained on data prepared with (max_train_lines=all "
    )


def test_quiet_silences_exactly_the_listed_warnings(tmp_path):
    """recipes/quiet.py runs a module as `python -m` does, without the listed third-party
    deprecations; any other warning, and the module's errors, still reach stderr."""
    (tmp_path / "noisy.py").write_text(
        "import sys, warnings\n"
        "warnings.warn(\"`torch.cuda.amp.custom_fwd(args...)` is deprecated. Please use ...\", FutureWarning)\n"
        "warnings.warn(\"\\nThe version_base parameter is not specified.\\nHydra will assume ...\", UserWarning)\n"
        "warnings.warn(\"'pin_memory' argument is set as true but no accelerator is found, then ...\")\n"
        "warnings.warn(\"`torch.cuda.amp.custom_fwd(args...)` is deprecated.\", UserWarning)  # other category\n"
        "warnings.warn('fairseq-sage: our own warning')\n"
        "print('args', sys.argv[1:], __name__)\n"
        "raise SystemExit('error: the module failed')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "quiet.py"), "noisy", "--flag"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout == "args ['--flag'] __main__\n"
    warned = [line for line in result.stderr.splitlines() if "Warning: " in line]
    assert [line.split("Warning: ", 1)[1] for line in warned] == [
        "`torch.cuda.amp.custom_fwd(args...)` is deprecated.", "fairseq-sage: our own warning"
    ]
    assert result.stderr.strip().endswith("error: the module failed")


def test_corrupted_file_fails_the_checksum(tmp_path):
    data = write_synthetic_multi30k(tmp_path / "multi30k")
    corrupted = bytearray((data / "val.en.gz").read_bytes())
    corrupted[-5] ^= 0xFF
    (data / "val.en.gz").write_bytes(bytes(corrupted))
    env = {"MULTI30K_SHA256SUMS": str(data / "SHA256SUMS")}
    result = run_script("prepare.sh", "--data", data, tmp_path / "work", env=env)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"error: {data}/val.en.gz does not match its sha256 in {data}/SHA256SUMS "
        "(or cannot be read); use an intact copy of Multi30k (--data DIR)"
    )
    assert not (tmp_path / "work" / "orig" / "val.en.gz").exists()
    assert not list((tmp_path / "work").glob("text/*"))


def run_sentencepiece(*args, stdin=b""):
    return subprocess.run(
        [sys.executable, "-m", "data_prep.sentencepiece_bpe", *map(str, args)],
        cwd=REPO, input=stdin, capture_output=True,
    )  # fmt: skip


def test_sentencepiece_bpe_round_trip(tmp_path):
    data = write_synthetic_multi30k(tmp_path / "multi30k")
    for lang in ("de", "en"):
        with gzip.open(data / f"train.{lang}.gz", "rb") as compressed:
            (tmp_path / f"train.{lang}").write_bytes(compressed.read())
    prefix = tmp_path / "spm" / "joint"
    trained = run_sentencepiece("train", "--inputs", tmp_path / "train.de", tmp_path / "train.en",
                                "--model-prefix", prefix, "--vocab-size", "60")
    assert trained.returncode == 0, trained.stderr
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["joint.model", "joint.vocab"]

    # a carriage return inside a line must not split it; an empty line stays a line
    text = "Ein kleine Hund läuft im Schnee.\nA\rdog.\n\nDer Mann sitzt auf der Straße.\n"
    encoded = run_sentencepiece("encode", "--model", f"{prefix}.model", stdin=text.encode())
    pieces = encoded.stdout.decode().split("\n")[:-1]
    assert len(pieces) == 4 and pieces[2] == ""
    assert len(pieces[0].split(" ")) > 6
    assert "".join(pieces[0].split(" ")).replace("▁", " ").strip() == "Ein kleine Hund läuft im Schnee."
    decoded = run_sentencepiece("decode", "--model", f"{prefix}.model", stdin=encoded.stdout)
    assert decoded.stdout.decode().split("\n")[:-1] == [
        "Ein kleine Hund läuft im Schnee.", "A dog.", "", "Der Mann sitzt auf der Straße."
    ]

    too_big = run_sentencepiece("train", "--inputs", tmp_path / "train.de", "--model-prefix",
                                tmp_path / "big", "--vocab-size", "100000")
    assert too_big.returncode == 1
    assert too_big.stderr.decode().strip().splitlines()[-1].startswith(
        "error: sentencepiece training failed: "
    )
    assert "Vocabulary size too high (100000)" in too_big.stderr.decode()
    assert not list(tmp_path.glob("big*"))


def test_bad_command_lines(tmp_path):
    assert run_script("run.sh", "--data", tmp_path / "missing").stderr.strip() == (
        f"error: --data {tmp_path}/missing: no such folder"
    )
    assert "OPTIMIZER sgd: must be adam or adam_sage" in run_script("train.sh", tmp_path, "sgd").stderr
    assert "has no binarized data; run recipes/multi30k/prepare.sh" in run_script(
        "train.sh", tmp_path, "adam"
    ).stderr


needs_real_data = pytest.mark.skipif(
    not MULTI30K.is_dir(), reason=f"real Multi30k folder {MULTI30K} not present"
)


@needs_real_data
def test_recipe_checksums_are_the_data_folders():
    assert (RECIPE / "SHA256SUMS").read_text() == (MULTI30K / "SHA256SUMS").read_text()


@needs_real_data
def test_corrupted_copy_of_the_real_data_is_refused(tmp_path):
    data = tmp_path / "multi30k"
    shutil.copytree(MULTI30K, data)
    os.chmod(data, 0o755)
    os.chmod(data / "train.de.gz", 0o644)
    with open(data / "train.de.gz", "ab") as train:
        train.write(b"\0")
    result = run_script("prepare.sh", "--data", data, tmp_path / "work")
    assert result.returncode == 1
    assert f"error: {data}/train.de.gz does not match its sha256 in {RECIPE}/SHA256SUMS" in result.stderr


@needs_real_data
def test_quickstart_on_a_subset_of_the_real_data(tmp_path):
    workdir = tmp_path / "work"
    env = {**TINY_RUN, "MAX_TRAIN_LINES": "1000", "MAX_VALID_LINES": "100", "MAX_TEST_LINES": "15",
           "SPM_VOCAB_SIZE": "1000"}  # fmt: skip
    result = check_ok(run_script("run.sh", workdir, "--", *TINY_SIZES, env=env))
    source = re.search(r"\] fetch \(source=(.*)\)", result.stdout)  # the default data folder, by any path
    assert source and Path(source.group(1)).resolve() == MULTI30K.resolve(), result.stdout
    assert "train: 1000 pairs, valid: 100, test2016: 15, test2017: 15" in result.stdout
    check_table(workdir, ["adam", "adam_sage"])
    references = (workdir / "text" / "test2016.en").read_text().splitlines()
    with gzip.open(MULTI30K / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as raw:
        assert references == raw.read().splitlines()[:15]
