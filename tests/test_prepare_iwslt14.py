"""recipes/iwslt14_de_en/prepare.sh, run offline on a small fake de-en.tgz in the upstream layout."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_archives import OVERLONG_MARKER, RATIO_MARKER, build_iwslt14, with_real_files

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "iwslt14_de_en" / "prepare.sh"
STEPS = [
    "download", "extract", "train-text", "tokenize-train", "clean-train", "lowercase-train",
    "test-text", "split-train-valid", "subwords", "binarize",
]


def run_prepare(workdir: Path, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "BPE_MERGES": "100", "WORKERS": "1", **environment}
    return subprocess.run(["bash", str(SCRIPT), str(workdir)], env=env, capture_output=True, text=True,
                          cwd="/")


def without_bpe(path: Path) -> list:
    return [re.sub(r"@@( |$)", "", line) for line in path.read_text(encoding="utf-8").splitlines()]


def lines(path: Path) -> list:
    return path.read_text(encoding="utf-8").splitlines()


def file_times(root: Path) -> dict:
    return {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A finished run; a corrupted de-en.tgz was planted first and IWSLT14_SHA256 given."""
    upstream = tmp_path_factory.mktemp("upstream")
    fixture = build_iwslt14(upstream)
    workdir = tmp_path_factory.mktemp("work")
    corrupted = workdir / "orig" / "iwslt14" / "de-en.tgz"
    corrupted.parent.mkdir(parents=True)
    corrupted.write_bytes(b"truncated download")
    started = time.monotonic()
    result = run_prepare(workdir, IWSLT14_URL=str(fixture.archive), IWSLT14_SHA256=fixture.sha256)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return fixture, workdir, result, seconds


def test_finishes_quickly_and_reports_split_sizes(prepared):
    fixture, workdir, result, seconds = prepared
    assert seconds < 60
    kept = len(fixture.kept["de"])
    valid = kept // 23
    assert f"train: {kept - valid} sentence pairs" in result.stdout
    assert f"valid: {valid} sentence pairs" in result.stdout
    assert f"test: {len(fixture.test['de'])} sentence pairs" in result.stdout


def test_corrupted_download_is_detected_and_fetched_again(prepared):
    fixture, workdir, result, _ = prepared
    assert "sha256 mismatch" in result.stderr
    assert (workdir / "orig/iwslt14/de-en.tgz").read_bytes() == fixture.archive.read_bytes()


def test_tag_lines_removed_and_title_text_kept(prepared):
    fixture, workdir, _, _ = prepared
    for language in ("de", "en"):
        raw = lines(workdir / f"iwslt14.tokenized.de-en/tmp/train.tags.de-en.raw.{language}")
        assert raw == fixture.raw_text_lines[language]
        text = "\n".join(raw)
        for tag in ("<url>", "<talkid>", "<keywords>", "<title>", "</title>", "<description>", "ted.com"):
            assert tag not in text
    assert "redner : " in (workdir / "iwslt14.tokenized.de-en/tmp/train.tags.de-en.de").read_text(encoding="utf-8")


def test_cleaning_dropped_the_planted_pairs(prepared):
    fixture, workdir, _, _ = prepared
    tmp = workdir / "iwslt14.tokenized.de-en/tmp"
    for language in ("de", "en"):
        tokenized = (tmp / f"train.tags.de-en.tok.{language}").read_text(encoding="utf-8")
        cleaned = lines(tmp / f"train.tags.de-en.{language}")
        assert OVERLONG_MARKER in tokenized and RATIO_MARKER in tokenized
        assert cleaned == fixture.kept[language]
        assert not any(OVERLONG_MARKER in line or RATIO_MARKER in line or not line for line in cleaned)


def test_bpe_text_is_the_stride_split_of_the_cleaned_text(prepared):
    fixture, workdir, _, _ = prepared
    prep = workdir / "iwslt14.tokenized.de-en"
    assert (prep / "code").is_file()
    for language in ("de", "en"):
        kept = fixture.kept[language]
        assert "@@ " in (prep / f"train.{language}").read_text(encoding="utf-8")
        assert without_bpe(prep / f"valid.{language}") == kept[22::23]
        assert without_bpe(prep / f"train.{language}") == [
            line for number, line in enumerate(kept, start=1) if number % 23
        ]
        assert without_bpe(prep / f"test.{language}") == fixture.test[language]
        # Tokenized, lowercased, not BPE'd test reference kept for evaluation.
        assert lines(prep / f"tmp/test.{language}") == fixture.test[language]
    assert "’" not in (prep / "tmp/test.raw.en").read_text(encoding="utf-8")


def test_binarized_data_and_separate_dictionaries(prepared):
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    fixture, workdir, _, _ = prepared
    data_bin = workdir / "data-bin/iwslt14.tokenized.de-en"
    kept = len(fixture.kept["de"])
    sizes = {"train": kept - kept // 23, "valid": kept // 23, "test": len(fixture.test["de"])}
    for split, size in sizes.items():
        for language in ("de", "en"):
            assert (data_bin / f"{split}.de-en.{language}.bin").is_file()
            assert len(MMapIndexedDataset(str(data_bin / f"{split}.de-en.{language}"))) == size
    # Separate dictionaries: each holds exactly the symbols of its own side's training text.
    symbols = {}
    for language in ("de", "en"):
        entries = {entry.split(" ")[0] for entry in lines(data_bin / f"dict.{language}.txt")}
        symbols[language] = {symbol for symbol in entries if not symbol.startswith("madeupword")}  # padding
        train_text = (workdir / f"iwslt14.tokenized.de-en/train.{language}").read_text(encoding="utf-8")
        assert symbols[language] == set(train_text.split())
    assert symbols["de"] != symbols["en"]
    assert not list(workdir.rglob("*.partial")) and not list(workdir.rglob("*.tmp"))


def test_rerun_skips_every_step_and_rewrites_nothing(prepared):
    _, workdir, _, _ = prepared
    before = file_times(workdir)
    result = run_prepare(workdir, IWSLT14_URL="/nonexistent/de-en.tgz")
    assert result.returncode == 0, result.stderr
    assert [f"skip {step}: already done" in result.stdout for step in STEPS] == [True] * len(STEPS)
    assert file_times(workdir) == before


def test_interrupted_step_is_redone_and_new_subword_settings_rerun(prepared, tmp_path):
    _, workdir, _, _ = prepared
    copy = tmp_path / "work"
    shutil.copytree(workdir, copy)
    prep = copy / "iwslt14.tokenized.de-en"
    (prep / ".steps/split-train-valid.done").unlink()  # as if killed during the split
    (prep / "tmp/valid.de").unlink()
    result = run_prepare(copy, SUBWORD_METHOD="sentencepiece", SPM_VOCAB_SIZE="120")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "skip tokenize-train: already done" in result.stdout
    assert "[iwslt14_de_en] split-train-valid\n" in result.stdout
    assert "[iwslt14_de_en] subwords (sentencepiece vocab=120)" in result.stdout
    assert "[iwslt14_de_en] binarize (sentencepiece vocab=120)" in result.stdout
    assert lines(prep / "tmp/valid.de") == lines(workdir / "iwslt14.tokenized.de-en/tmp/valid.de")
    assert (prep / "spm.model").is_file()
    assert "\u2581" in (prep / "train.de").read_text(encoding="utf-8")
    assert (copy / "data-bin/iwslt14.tokenized.de-en/train.de-en.de.bin").is_file()


@pytest.mark.parametrize(
    "arguments, environment, status, message",
    [
        ([], {}, 2, "usage: bash recipes/iwslt14_de_en/prepare.sh WORKDIR"),
        (["WORKDIR"], {"BPE_MERGES": "ten"}, 1, "error: BPE_MERGES=ten: must be a positive integer"),
        (["WORKDIR"], {"SUBWORD_METHOD": "wordpiece"}, 1,
         "error: SUBWORD_METHOD=wordpiece: must be bpe or sentencepiece"),
    ],
)
def test_bad_invocation_fails_with_one_line(tmp_path, arguments, environment, status, message):
    env = {**os.environ, "PYTHON": sys.executable, **environment}
    command = ["bash", str(SCRIPT), *[str(tmp_path / argument) for argument in arguments]]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == status
    assert result.stderr.strip() == message


def test_unreachable_archive_names_the_variable_to_set(tmp_path):
    result = run_prepare(tmp_path / "work", IWSLT14_URL=str(tmp_path / "missing.tgz"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: could not fetch de-en.tgz; set IWSLT14_URL to a reachable copy (http(s) URL, file:// URL or path)"
    )


# The ten real dev/test files of de-en.tgz (their README gives the segment counts); the real
# train.tags is not there, so the archive pairs them with the fake one's synthetic train.tags.
REAL_TEST_FILES = REPO.parent / "shared" / "data" / "iwslt14_devtest"
REAL_SEGMENTS = {"IWSLT14.TED.dev2010": 887, "IWSLT14.TEDX.dev2012": 1165, "IWSLT14.TED.tst2010": 1565,
                 "IWSLT14.TED.tst2011": 1433, "IWSLT14.TED.tst2012": 1700}  # fmt: skip
SEGMENT = re.compile(r'^\s*<seg id="\d+">\s*(.*?)\s*</seg>\s*$')


def real_segments(language: str) -> list:
    """The segments of the five real test sets in fairseq's order, read with a regular expression,
    ’ made ' (as fairseq's prepare-iwslt14.sh does before tokenizing)."""
    segments = []
    for test_set, count in REAL_SEGMENTS.items():
        text = (REAL_TEST_FILES / f"{test_set}.de-en.{language}.xml").read_text(encoding="utf-8")
        found = [m.group(1) for m in map(SEGMENT.match, text.splitlines()) if m]
        assert len(found) == count, f"{test_set}.{language}: {len(found)} segments, its README says {count}"
        segments += [segment.replace("’", "'") for segment in found]
    return segments


@pytest.fixture(scope="module")
def prepared_real_test_sets(tmp_path_factory):
    if not REAL_TEST_FILES.is_dir():
        pytest.skip(f"real IWSLT'14 dev/test folder {REAL_TEST_FILES} not present")
    upstream = tmp_path_factory.mktemp("upstream_real")
    fake = build_iwslt14(upstream)
    real = {f"de-en/{path.name}": path for path in REAL_TEST_FILES.glob("IWSLT14.*.xml")}
    real["de-en/README"] = REAL_TEST_FILES / "UPSTREAM_README"
    (upstream / "real").mkdir()
    archive = with_real_files(fake.archive, upstream / "real" / "de-en.tgz", real)
    workdir = tmp_path_factory.mktemp("work_real")
    result = run_prepare(workdir, IWSLT14_URL=str(archive))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return fake, workdir, result


def test_real_test_sets_give_fairseqs_6750_segments_in_order(prepared_real_test_sets):
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    fake, workdir, result = prepared_real_test_sets
    total = sum(REAL_SEGMENTS.values())
    assert total == 6750
    assert f"test: {total} sentence pairs" in result.stdout
    kept = len(fake.kept["de"])
    assert f"train: {kept - kept // 23} sentence pairs" in result.stdout
    prep = workdir / "iwslt14.tokenized.de-en"
    for language in ("de", "en"):
        assert lines(prep / f"tmp/test.raw.{language}") == real_segments(language)
        tokenized = lines(prep / f"tmp/test.{language}")
        assert len(tokenized) == total and all(tokenized) and all(line == line.lower() for line in tokenized)
        assert len(lines(prep / f"test.{language}")) == total
        data = workdir / f"data-bin/iwslt14.tokenized.de-en/test.de-en.{language}"
        assert len(MMapIndexedDataset(str(data))) == total
