"""Unit tests of data_prep against hand-computed expectations (Moses/fairseq behaviour)."""

import hashlib
import http.server
import io
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from data_prep import archive, clean, download, iwslt, moses, sgm, split, subword, textio
from data_prep.cli import DataPrepError

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, stdin: str = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"data_prep.{module}", *map(str, args)],
        input=stdin, capture_output=True, text=True, cwd=REPO,
    )


# --- Moses tokenisation (expected strings are tokenizer.perl's output) -------------------------------


@pytest.mark.parametrize(
    "lang, text, expected",
    [
        (
            "de",
            'Das ist "ein" Test-Satz, mit 5,300 Euro & <Tags> | und [Klammern]... z.B. Hr. Müller\'s Haus.',
            "Das ist &quot; ein &quot; Test-Satz , mit 5,300 Euro &amp; &lt; Tags &gt; &#124; und "
            "&#91; Klammern &#93; ... z.B. Hr . Müller &apos; s Haus .",
        ),
        ("en", "It's a well-known fact -- really?!", "It &apos;s a well-known fact -- really ? !"),
        ("en", "Er sagte: 'Nein.'", "Er sagte : &apos; Nein . &apos; "),  # sic: trailing space
        # The period of the last word is split even after an abbreviation (Moses since 2018).
        ("en", "People stand near 3rd St.", "People stand near 3rd St ."),
        ("en", "A sign of avrovulcan.com.", "A sign of avrovulcan.com ."),
        # ... but not inside the line.
        ("en", "Mr. Smith came.", "Mr. Smith came ."),
    ],
)
def test_tokenize_matches_moses(lang, text, expected):
    assert moses.tokenize(text, lang) == expected


def test_tokenize_options():
    assert moses.tokenize("Ein Test-Satz.", "de", aggressive_dash_splits=True) == "Ein Test @-@ Satz ."
    assert moses.tokenize('Er sagt "ja" & geht.', "de", escape=False) == 'Er sagt " ja " & geht .'
    assert moses.tokenize_lowercase("Große Häuser.", "de") == "große häuser ."


def test_tokenize_passes_blank_lines_through():
    assert moses.tokenize("", "en") == ""
    assert moses.tokenize(" \t ", "en") == " \t "


@pytest.mark.parametrize(
    "lang, text",
    [
        ("en", 'He said: "It\'s 5,300 dollars (or more) & that\'s it!"'),
        ("de", "Die Straße, die wir sahen, war 3,5 km lang."),
        ("en", "Well... isn't it [really] a question?"),
    ],
)
def test_detokenize_inverts_tokenize(lang, text):
    assert moses.detokenize(moses.tokenize(text, lang), lang) == text


def test_moses_cli_tokenizes_files_with_workers(tmp_path):
    source = tmp_path / "in.de"
    source.write_text("Das ist gut.\nEin Haus, ein Baum.\n\nEnde.\n", encoding="utf-8")
    result = run_module("moses", "tokenize", "-l", "de", "--lowercase", "--workers", "2", source, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_text(encoding="utf-8") == "das ist gut .\nein haus , ein baum .\n\nende .\n"
    detok = run_module("moses", "detokenize", "-l", "en", stdin="It &apos;s fine .\n")
    assert detok.stdout == "It's fine.\n"


# --- clean-corpus-n rules ---------------------------------------------------------------------------


def test_normalize_squeezes_space_and_drops_bars_unless_factored():
    assert clean.normalize("  a \t b\u00a0 c  ", factored=False) == "a b c"
    assert clean.normalize("a|b  c", factored=False) == "ab c"
    assert clean.normalize("a|X  b|Y", factored=True) == "a|X b|Y"
    assert clean.token_count("a b c") == 3
    assert clean.token_count("") == 0


def words(count: int) -> str:
    return " ".join(["w"] * count)


@pytest.mark.parametrize(
    "source_tokens, target_tokens, kept",
    [
        (2, 3, True),  # ratio 1.5: not above the limit
        (2, 4, False),  # ratio 2 > 1.5
        (4, 2, False),  # the ratio is checked both ways
        (10, 15, True),
        (10, 16, False),  # 1.6 > 1.5
        (175, 175, True),  # at the maximum
        (176, 176, False),  # above the maximum
        (0, 3, False),  # empty side
    ],
)
def test_keep_pair_length_and_ratio(source_tokens, target_tokens, kept):
    rules = clean.CleaningRules(min_tokens=1, max_tokens=175, ratio=1.5)
    assert clean.keep_pair(words(source_tokens), words(target_tokens), rules) is kept


def test_keep_pair_min_tokens_ratio_off_and_word_length():
    rules = clean.CleaningRules(min_tokens=3, max_tokens=80, ratio=None)
    assert not clean.keep_pair(words(2), words(3), rules)
    assert clean.keep_pair(words(3), words(40), rules)  # ratio 13.3 but ignored
    default_rules = clean.CleaningRules(min_tokens=1, max_tokens=80)  # Moses default ratio 9
    assert clean.keep_pair(words(2), words(18), default_rules)
    assert not clean.keep_pair(words(2), words(19), default_rules)
    assert clean.keep_pair("a " + "x" * 1000, "b", default_rules)
    assert not clean.keep_pair("a " + "x" * 1001, "b", default_rules)


def test_clean_pairs_keeps_lines_together_and_normalizes():
    rules = clean.CleaningRules(min_tokens=1, max_tokens=4, ratio=1.5)
    source = ["a b", "a b c d e", "", "x  y ", "p|q r", "k"]
    target = ["c d", "c d", "z", " u v", "s t", "l m n"]
    assert list(clean.clean_pairs(source, target, rules)) == [("a b", "c d"), ("x y", "u v"), ("pq r", "s t")]


def test_clean_pairs_factored_corpus_and_errors():
    rules = clean.CleaningRules(min_tokens=1, max_tokens=5)
    assert list(clean.clean_pairs(["a|X b|Y"], ["c|Z"], rules)) == [("a|X b|Y", "c|Z")]
    with pytest.raises(DataPrepError, match="blank factor"):
        list(clean.clean_pairs(["a|X", "b||Y"], ["c|Z", "d|W"], rules))
    with pytest.raises(DataPrepError, match="fewer lines"):
        list(clean.clean_pairs(["a", "b"], ["c"], rules, ("x.de", "x.en")))


def test_clean_cli_writes_both_sides(tmp_path):
    (tmp_path / "c.de").write_text("a b\nviel zu viele Wörter hier drin\nx\n", encoding="utf-8")
    (tmp_path / "c.en").write_text("c d\nfew\ny\n", encoding="utf-8")
    result = run_module("clean", "--ratio", "1.5", tmp_path / "c", "de", "en", tmp_path / "out", 1, 175)
    assert result.returncode == 0, result.stderr
    assert "3 pairs read, 2 kept" in result.stderr
    assert (tmp_path / "out.de").read_text(encoding="utf-8") == "a b\nx\n"
    assert (tmp_path / "out.en").read_text(encoding="utf-8") == "c d\ny\n"
    missing = run_module("clean", tmp_path / "nothing", "de", "en", tmp_path / "o", 1, 5)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nothing.de'}: no such file (expected CORPUS.de and CORPUS.en)"
    ]


# --- stride split -----------------------------------------------------------------------------------


def test_split_every_23rd_line_goes_to_valid():
    lines = [f"line {number}" for number in range(1, 51)]
    train, valid = split.split_every_nth(lines, 23)
    assert valid == ["line 23", "line 46"]
    assert len(train) == 48
    assert "line 23" not in train and train[21:23] == ["line 22", "line 24"]


def test_split_file(tmp_path):
    (tmp_path / "all").write_text("".join(f"{n}\n" for n in range(1, 8)))
    assert split.split_file(tmp_path / "all", tmp_path / "train", tmp_path / "valid", every=3) == (5, 2)
    assert (tmp_path / "valid").read_text() == "3\n6\n"
    assert (tmp_path / "train").read_text() == "1\n2\n4\n5\n7\n"
    with pytest.raises(DataPrepError, match="--every 0"):
        split.split_file(tmp_path / "all", tmp_path / "t", tmp_path / "v", every=0)


def test_split_refuses_outputs_that_are_one_file(tmp_path):
    """Renaming two outputs onto one path would keep only one of them: lines would be lost, silently."""
    source = tmp_path / "all"
    source.write_text("".join(f"{n}\n" for n in range(1, 8)))
    (tmp_path / "link").symlink_to(tmp_path / "same")
    cases = {  # (train, valid): the two paths named, the path shown
        ("same", "same"): ("TRAIN_OUTPUT and VALID_OUTPUT", "same"),
        ("same", "link"): ("TRAIN_OUTPUT and VALID_OUTPUT", "link"),
        ("all", "valid"): ("INPUT and TRAIN_OUTPUT", "all"),
    }
    for (train, valid), (names, shown) in cases.items():
        result = run_module("split", "--every", "3", source, tmp_path / train, tmp_path / valid)
        assert result.returncode == 1
        assert result.stderr.strip() == f"error: {names} are one file ({tmp_path / shown}); give three different paths"
    assert source.read_text() == "".join(f"{n}\n" for n in range(1, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all", "link"]


# --- IWSLT and SGM extraction -----------------------------------------------------------------------


def test_iwslt_train_text_drops_metadata_lines_and_title_tags():
    lines = [
        "<url>http://www.ted.com/talks/a.html</url>",
        "<keywords>talks, climate</keywords>",
        "<speaker>Al Gore</speaker>",
        "<talkid>1</talkid>",
        "<title>Al Gore: Die Klimakrise</title>",
        "<description>TED Talk: Al Gore spricht</description>",
        "Vielen Dank, Chris.",
        "Mitten im Satz <url> steht etwas",
    ]
    # fairseq's prepare-iwslt14.sh greps out only <url>, <talkid> and <keywords> lines.
    assert list(iwslt.train_text(lines)) == [
        "<speaker>Al Gore</speaker>",
        "Al Gore: Die Klimakrise",
        "TED Talk: Al Gore spricht",
        "Vielen Dank, Chris.",
    ]


def test_iwslt_xml_segments():
    lines = [
        '<doc docid="535" genre="lectures">',
        "<title>Kein Segment</title>",
        '<seg id="1"> Vor ein paar Jahren’s  fand ich. </seg>',
        '<seg id="2">Ohne Leerzeichen</seg>',
        '<seg id="3">\tTab \t </seg>  ',
        "</doc>",
    ]
    assert list(iwslt.xml_segments(lines)) == ["Vor ein paar Jahren's  fand ich.", "Ohne Leerzeichen", "Tab"]


def test_sgm_segments_like_input_from_sgm():
    lines = [
        '<srcset setid="newstest2014" srclang="any">',
        '<doc sysid="ref" docid="1012-bbc" genre="news" origlang="en">',
        "<p>",
        '<seg id="1">Gutach: Noch mehr Sicherheit für Fußgänger</seg>',
        '<seg id="2">  Sie &amp; er   sagten &quot;Nein&quot; .  </seg>',
        "<SEG ID=\"3\" extra='x'>Groß   geschrieben</SEG>",
        '<seg id="4">',
        "über",
        " zwei Zeilen</seg>",
        '<seg id="5"></seg>',
        "</p>",
        "</doc>",
    ]
    assert list(sgm.sgm_segments(lines)) == [
        "Gutach: Noch mehr Sicherheit für Fußgänger",
        "Sie &amp; er sagten &quot;Nein&quot; .",
        "Groß geschrieben",
        "über zwei Zeilen",
        "",
    ]


def test_line_reading_ends_lines_at_newline_only(tmp_path):
    path = tmp_path / "crlf"
    path.write_bytes("a\rb\r\nc\u2028d\n\xff".encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    lines = list(textio.read_lines(path))
    assert lines == ["a\rb\r", "c\u2028d", "\udcff"]
    textio.write_lines(tmp_path / "copy", lines[:2])
    assert (tmp_path / "copy").read_bytes() == "a\rb\r\nc\u2028d\n".encode("utf-8")


# --- archive extraction -----------------------------------------------------------------------------


def make_tgz(path: Path, members: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_members_only_those_named(tmp_path):
    tgz = make_tgz(tmp_path / "a.tgz", {"./x/one.de": "eins\n", "x/two.en": "two\n", "other": "o\n"})
    written = archive.extract_members(tgz, tmp_path / "out", ["x/two.en", "x/one.de"])
    assert written == [tmp_path / "out/x/two.en", tmp_path / "out/x/one.de"]
    assert (tmp_path / "out/x/one.de").read_text() == "eins\n"
    assert not (tmp_path / "out/other").exists()
    with pytest.raises(DataPrepError, match="no member x/missing"):
        archive.extract_members(tgz, tmp_path / "out", ["x/missing"])
    (tmp_path / "broken.tgz").write_bytes(b"not an archive")
    with pytest.raises(DataPrepError, match="cannot read archive"):
        archive.extract_members(tmp_path / "broken.tgz", tmp_path / "out", ["x"])


# --- subwords ---------------------------------------------------------------------------------------


def toy_corpus(tmp_path: Path) -> list:
    sentences = [
        "der kleine hund läuft schnell nach hause .",
        "die kleinen hunde laufen schneller .",
        "the little dog runs home quickly .",
        "the little dogs run faster .",
    ] * 5
    paths = [tmp_path / "train.de", tmp_path / "train.en"]
    paths[0].write_text("\n".join(sentences[::2]) + "\n", encoding="utf-8")
    paths[1].write_text("\n".join(sentences[1::2]) + "\n", encoding="utf-8")
    return paths


def test_joint_bpe_learn_and_apply(tmp_path):
    train_files = toy_corpus(tmp_path)
    subword.learn_joint_bpe(train_files, tmp_path / "code", merges=15)
    codes = (tmp_path / "code").read_text(encoding="utf-8").splitlines()
    assert codes[0].startswith("#version")
    assert 1 <= len(codes) - 1 <= 15
    (tmp_path / "in").write_text("die kleinsten hunde\n\nläuft .\n", encoding="utf-8")
    assert subword.apply_bpe_file(tmp_path / "code", tmp_path / "in", tmp_path / "out") == 3
    segmented = (tmp_path / "out").read_text(encoding="utf-8").splitlines()
    assert "@@ " in segmented[0]
    assert [re.sub(r"@@( |$)", "", line) for line in segmented] == ["die kleinsten hunde", "", "läuft ."]
    with pytest.raises(DataPrepError, match="no such BPE codes file"):
        subword.apply_bpe_file(tmp_path / "nothing", tmp_path / "in", tmp_path / "out")


@pytest.mark.parametrize("method", ["bpe", "sentencepiece"])
@pytest.mark.parametrize("content", ["", " \n\n"], ids=["empty", "blank"])
def test_learning_from_a_file_without_text_stops_with_one_line(tmp_path, method, content):
    train_files = toy_corpus(tmp_path)
    train_files[1].write_text(content)
    result = run_module("subword", "learn", "--method", method, "--size", "10", "--model", tmp_path / "model",
                        *train_files)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {train_files[1]}: no text to learn subwords from (the file is empty "
                                     "or blank); check the training files")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.de", "train.en"]


def test_sentencepiece_method_learns_and_encodes(tmp_path):
    train_files = toy_corpus(tmp_path)
    result = run_module("subword", "learn", "--method", "sentencepiece", "--size", "40",
                        "--model", tmp_path / "spm", *train_files)
    assert result.returncode == 0, result.stderr
    (tmp_path / "in").write_text("the little dogs\n", encoding="utf-8")
    subword.apply_sentencepiece_file(tmp_path / "spm.model", tmp_path / "in", tmp_path / "out")
    pieces = (tmp_path / "out").read_text(encoding="utf-8").split()
    assert "".join(pieces).replace("\u2581", " ").strip() == "the little dogs"


# --- downloads --------------------------------------------------------------------------------------


def test_fetch_copies_path_and_file_url_and_skips_finished(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    dest = download.fetch("http://unused.invalid/x", tmp_path / "d/x.bin", sha256=digest, override=str(source))
    assert dest.read_bytes() == b"payload"
    dest2 = download.fetch("http://unused.invalid/y", tmp_path / "y.bin", override=source.as_uri())
    assert dest2.read_bytes() == b"payload"
    source.unlink()  # a finished, verified file is not fetched again
    assert download.fetch("http://unused.invalid/x", dest, sha256=digest, override=str(source)) == dest
    assert download.fetch("http://unused.invalid/y", dest2) == dest2


def test_fetch_replaces_a_corrupted_file(tmp_path, capsys):
    source = tmp_path / "source.bin"
    source.write_bytes(b"good data")
    dest = tmp_path / "x.bin"
    dest.write_bytes(b"corrupted")
    download.fetch("http://unused.invalid/x", dest, sha256=hashlib.sha256(b"good data").hexdigest(),
                   override=str(source))
    assert dest.read_bytes() == b"good data"
    assert "sha256 mismatch" in capsys.readouterr().err


def test_fetch_fails_clearly_when_the_source_is_wrong(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"unexpected")
    with pytest.raises(DataPrepError, match="expected 0+ twice in a row"):
        download.fetch("http://unused.invalid/x", tmp_path / "x.bin", sha256="0" * 64, override=str(source))
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.part").exists()
    with pytest.raises(DataPrepError, match="64 hexadecimal digits"):
        download.fetch("http://unused.invalid/x", tmp_path / "x.bin", sha256="abc", override=str(source))
    result = run_module("download", "http://unused.invalid/x", tmp_path / "x.bin", "--override", tmp_path / "none")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'none'}: no such file")


class RangeServer:
    """Local HTTP server for one file, honouring ``Range: bytes=N-`` unless told not to."""

    def __init__(self, content: bytes, honour_range: bool = True):
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                if self.path != "/file":
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if honour_range and match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(content) - start))
                self.end_headers()
                self.wfile.write(content[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("honour_range", [True, False])
def test_fetch_resumes_a_partial_http_download(tmp_path, honour_range):
    content = bytes(range(256)) * 40
    server = RangeServer(content, honour_range)
    try:
        dest = tmp_path / "file.bin"
        (tmp_path / "file.bin.part").write_bytes(content[:3000])
        download.fetch(f"{server.url}/file", dest, sha256=hashlib.sha256(content).hexdigest())
        assert dest.read_bytes() == content
        assert server.requests == ["bytes=3000-"]
        with pytest.raises(DataPrepError, match="HTTP 404"):
            download.fetch(f"{server.url}/missing", tmp_path / "missing.bin")
    finally:
        server.close()
