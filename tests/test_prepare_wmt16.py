"""recipes/wmt16_en_de/prepare.sh, run offline on small fake WMT archives in the upstream layouts."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_archives import OVERLONG_MARKER, RATIO_MARKER, build_wmt16, with_real_files

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "wmt16_en_de" / "prepare.sh"
STEPS = ["download", "extract", "raw-text", "tokenize", "clean-train", "subwords", "binarize"]
URL_VARIABLES = {
    "europarl": "WMT16_EUROPARL_URL",
    "commoncrawl": "WMT16_COMMONCRAWL_URL",
    "nc": "WMT16_NC_URL",
    "dev": "WMT16_DEV_URL",
}


def run_prepare(workdir: Path, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "BPE_MERGES": "200", "WORKERS": "1", **environment}
    return subprocess.run(["bash", str(SCRIPT), str(workdir)], env=env, capture_output=True, text=True,
                          cwd="/")


def lines(path: Path) -> list:
    return path.read_text(encoding="utf-8").splitlines()


def without_bpe(path: Path) -> list:
    return [re.sub(r"@@( |$)", "", line) for line in lines(path)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A finished run from the fake archives (file:// URL for one, plain paths for the others).

    A corrupted dev.tgz was planted first and WMT16_DEV_SHA256 given.
    """
    upstream = tmp_path_factory.mktemp("upstream")
    fixture = build_wmt16(upstream)
    workdir = tmp_path_factory.mktemp("work")
    corrupted = workdir / "orig" / "wmt16_en_de" / "dev.tgz"
    corrupted.parent.mkdir(parents=True)
    corrupted.write_bytes(b"\x1f\x8b not really gzip")
    overrides = {variable: str(fixture.archives[name]) for name, variable in URL_VARIABLES.items()}
    overrides["WMT16_COMMONCRAWL_URL"] = fixture.archives["commoncrawl"].as_uri()
    started = time.monotonic()
    result = run_prepare(workdir, WMT16_DEV_SHA256=fixture.sha256["dev"], **overrides)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return fixture, workdir, result, seconds


def test_finishes_quickly_and_reports_split_sizes(prepared):
    fixture, _, result, seconds = prepared
    assert seconds < 60
    assert f"train: {len(fixture.train['en'])} sentence pairs" in result.stdout
    assert f"valid: {len(fixture.valid['en'])} sentence pairs" in result.stdout
    assert f"test: {len(fixture.test['en'])} sentence pairs" in result.stdout


def test_corrupted_download_is_detected_and_fetched_again(prepared):
    fixture, workdir, result, _ = prepared
    assert "dev.tgz: sha256 mismatch" in result.stderr
    assert (workdir / "orig/wmt16_en_de/dev.tgz").read_bytes() == fixture.archives["dev"].read_bytes()


def test_training_text_is_the_three_corpora_in_order_cleaned(prepared):
    fixture, workdir, _, _ = prepared
    tmp = workdir / "wmt16_en_de/tmp"
    for language in ("de", "en"):
        tokenized = (tmp / f"train.tok.{language}").read_text(encoding="utf-8")
        assert OVERLONG_MARKER in tokenized and RATIO_MARKER in tokenized and "x" * 1001 in tokenized
        assert lines(tmp / f"train.tok.clean.{language}") == fixture.train[language]


def test_valid_and_test_are_tokenized_not_cleaned(prepared):
    fixture, workdir, _, _ = prepared
    tmp = workdir / "wmt16_en_de/tmp"
    for language in ("de", "en"):
        assert lines(tmp / f"newstest2013.tok.{language}") == fixture.valid[language]
        assert OVERLONG_MARKER in fixture.valid[language][-1]  # 91 tokens, kept: valid is not cleaned
        assert lines(tmp / f"newstest2014.{language}") == fixture.raw_test[language]
        assert lines(tmp / f"newstest2014.tok.{language}") == fixture.test[language]


def test_joint_bpe_applied_to_every_split(prepared):
    fixture, workdir, _, _ = prepared
    prep = workdir / "wmt16_en_de"
    codes = lines(prep / "code")
    assert codes[0].startswith("#version") and 1 <= len(codes) - 1 <= 200
    for language in ("de", "en"):
        assert "@@ " in (prep / f"train.{language}").read_text(encoding="utf-8")
        assert without_bpe(prep / f"train.{language}") == fixture.train[language]
        assert without_bpe(prep / f"valid.{language}") == fixture.valid[language]
        assert without_bpe(prep / f"test.{language}") == fixture.test[language]


def test_binarized_with_a_joined_dictionary(prepared):
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    fixture, workdir, _, _ = prepared
    data_bin = workdir / "data-bin/wmt16_en_de"
    sizes = {"train": len(fixture.train["en"]), "valid": len(fixture.valid["en"]), "test": len(fixture.test["en"])}
    for split, size in sizes.items():
        for language in ("en", "de"):
            assert len(MMapIndexedDataset(str(data_bin / f"{split}.en-de.{language}"))) == size
    dictionary = lines(data_bin / "dict.en.txt")
    assert dictionary == lines(data_bin / "dict.de.txt")
    symbols = {entry.split(" ")[0] for entry in dictionary}
    prep = workdir / "wmt16_en_de"
    both_sides = (prep / "train.en").read_text(encoding="utf-8") + (prep / "train.de").read_text(encoding="utf-8")
    assert set(both_sides.split()) <= symbols


def test_rerun_skips_every_step_and_rewrites_nothing(prepared):
    _, workdir, _, _ = prepared
    before = {path: path.stat().st_mtime_ns for path in workdir.rglob("*") if path.is_file()}
    result = run_prepare(workdir)
    assert result.returncode == 0, result.stderr
    assert [f"skip {step}: already done" in result.stdout for step in STEPS] == [True] * len(STEPS)
    assert {path: path.stat().st_mtime_ns for path in workdir.rglob("*") if path.is_file()} == before


def test_wrong_archive_is_reported(tmp_path):
    fixture = build_wmt16(tmp_path)
    overrides = {variable: str(fixture.archives[name]) for name, variable in URL_VARIABLES.items()}
    overrides["WMT16_NC_URL"] = str(fixture.archives["europarl"])  # an archive without the nc files
    result = run_prepare(tmp_path / "work", **overrides)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'work/orig/wmt16_en_de/nc-v11.tgz'}: no member "
        "training-parallel-nc-v11/news-commentary-v11.de-en.en, "
        "training-parallel-nc-v11/news-commentary-v11.de-en.de; is it the right archive?"
    )


# The real newstest2014 SGM files of dev.tgz (3,003 segments, as their README says), put in the fake
# dev.tgz in their places; the training corpora and newstest2013 stay the fake ones.
REAL_TEST_FILES = REPO.parent / "shared" / "data" / "wmt14_newstest2014"
REAL_SEGMENTS = 3003
SEGMENT = re.compile(r'<seg id="\d+">(.*)</seg>')


def real_segments(name: str) -> list:
    """The text of each ``<seg>`` line of a real SGM file (one line each there), white space runs
    squeezed to one space and trimmed, read with a regular expression."""
    text = (REAL_TEST_FILES / name).read_text(encoding="utf-8")
    return [re.sub(r"[ \t\r\f\v]+", " ", m.group(1)).strip(" ") for m in SEGMENT.finditer(text)]


@pytest.fixture(scope="module")
def prepared_real_test_set(tmp_path_factory):
    if not REAL_TEST_FILES.is_dir():
        pytest.skip(f"real newstest2014 folder {REAL_TEST_FILES} not present")
    upstream = tmp_path_factory.mktemp("upstream_real")
    fake = build_wmt16(upstream)
    real = {f"dev/{path.name}": path for path in REAL_TEST_FILES.glob("newstest2014-deen-*.sgm")}
    (upstream / "real").mkdir()
    dev = with_real_files(fake.archives["dev"], upstream / "real" / "dev.tgz", real)
    overrides = {variable: str(fake.archives[name]) for name, variable in URL_VARIABLES.items()}
    overrides["WMT16_DEV_URL"] = str(dev)
    workdir = tmp_path_factory.mktemp("work_real")
    result = run_prepare(workdir, **overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return fake, workdir, result


def test_real_newstest2014_gives_3003_test_pairs_from_the_de_en_files(prepared_real_test_set):
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    fake, workdir, result = prepared_real_test_set
    assert f"test: {REAL_SEGMENTS} sentence pairs" in result.stdout
    assert f"train: {len(fake.train['en'])} sentence pairs" in result.stdout
    tmp = workdir / "wmt16_en_de/tmp"
    # German source and English reference of the de-en direction, not the en-de files beside them
    assert lines(tmp / "newstest2014.de") == real_segments("newstest2014-deen-src.de.sgm")
    assert lines(tmp / "newstest2014.en") == real_segments("newstest2014-deen-ref.en.sgm")
    for language in ("de", "en"):
        assert len(lines(tmp / f"newstest2014.{language}")) == REAL_SEGMENTS
        assert len(lines(tmp / f"newstest2014.tok.{language}")) == REAL_SEGMENTS
        assert len(lines(workdir / f"wmt16_en_de/test.{language}")) == REAL_SEGMENTS
        data = workdir / f"data-bin/wmt16_en_de/test.en-de.{language}"
        assert len(MMapIndexedDataset(str(data))) == REAL_SEGMENTS
