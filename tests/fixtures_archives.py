"""Small fake copies of the upstream corpus archives, in their exact layouts, for offline recipe tests.

Sentences are built from aligned German/English word lists with only letters, commas,
colons and a final period, so their Moses tokenization is known by construction: a
space before each ``,``, ``:`` and the final ``.``. The builders return the expected
tokenized lines of every split next to the archives, computed from that construction
(not by running the code under test). The pairs planted for cleaning to drop hold
marker words found nowhere else (``OVERLONG_MARKER``, ``RATIO_MARKER``).
"""

import hashlib
import io
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union

GERMAN = (
    "Haus Baum Auto Stadt Fluss Berg Kind Frau Mann Hund Katze Buch Tisch Fenster Garten Schule "
    "Straße Sonne Regen Wasser Brot Licht Musik Zeit Welt Arbeit Freund Idee Frage Antwort "
    "groß klein schnell langsam schön alt neu gut spät früh "
    "sieht baut liest findet macht trägt hört sagt fährt bringt"
).split()
ENGLISH = (
    "house tree car city river mountain child woman man dog cat book table window garden school "
    "street sun rain water bread light music time world work friend idea question answer "
    "big small fast slow beautiful old new good late early "
    "sees builds reads finds makes carries hears says drives brings"
).split()
assert len(GERMAN) == len(ENGLISH)

Pair = Tuple[str, str]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenized(text: str) -> str:
    """Moses tokenization of a fixture sentence (letters, ``,``, ``:`` and a final ``.`` only)."""
    text = text.replace(",", " ,").replace(":", " :")
    return text[:-1] + " ." if text.endswith(".") else text


class SentenceMaker:
    """Aligned German/English sentences of a given word count, deterministic per seed."""

    def __init__(self, seed: int):
        self._random = random.Random(seed)

    def pair(self, words: int, comma: bool = False, period: bool = True) -> Pair:
        indices = [self._random.randrange(len(GERMAN)) for _ in range(words)]
        sides = []
        for vocabulary in (GERMAN, ENGLISH):
            tokens = [vocabulary[i] for i in indices]
            if comma and words > 2:
                tokens[1] += ","
            sentence = " ".join(tokens)
            sentence = sentence[0].upper() + sentence[1:]
            sides.append(sentence + "." if period else sentence)
        return sides[0], sides[1]

    def pairs(self, count: int) -> List[Pair]:
        return [self.pair(self._random.randint(3, 12), comma=self._random.random() < 0.3) for _ in range(count)]


def add_member(tar: tarfile.TarFile, name: str, text: Union[str, bytes]) -> None:
    data = text.encode("utf-8") if isinstance(text, str) else text
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tgz(path: Path, members: Dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            add_member(tar, name, text)
    return path


def lines_text(lines: List[str]) -> str:
    return "".join(line + "\n" for line in lines)


# Planted pairs that the cleaning rules must drop; each holds a marker word found nowhere else.
OVERLONG_MARKER = "overlongword"
RATIO_MARKER = "ratioword"


def overlong_pair(words: int) -> Pair:
    """A pair of ``words + 1`` tokens on each side (too long for a max of ``words``)."""
    return " ".join([OVERLONG_MARKER] * words) + ".", " ".join([OVERLONG_MARKER] * words) + "."


def ratio_pair(short_words: int, long_words: int) -> Pair:
    """A pair whose token counts are ``short_words + 1`` and ``long_words + 1``."""
    return " ".join([RATIO_MARKER] * short_words) + ".", " ".join([RATIO_MARKER] * long_words) + "."


@dataclass
class IwsltFixture:
    archive: Path
    sha256: str
    raw_text_lines: Dict[str, List[str]]  # expected train text per language, after tag removal
    kept: Dict[str, List[str]] = field(default_factory=dict)  # expected tokenized, lowercased, cleaned
    test: Dict[str, List[str]] = field(default_factory=dict)  # expected tokenized, lowercased test


IWSLT_TEST_SETS = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)
APOSTROPHE_SEGMENT = ("Das ist’s.", "That’s it.")
APOSTROPHE_SEGMENT_TOKENIZED = ("das ist &apos; s .", "that &apos;s it .")  # ’ -> ', Moses, lowercase


def build_iwslt14(directory: Path, talks: int = 6, sentences_per_talk: int = 40) -> IwsltFixture:
    """``de-en.tgz`` as the IWSLT'14 archive: ``de-en/train.tags.de-en.{de,en}`` + five XML sets per language."""
    maker = SentenceMaker(seed=14)
    tags_lines: Dict[str, List[str]] = {"de": [], "en": []}
    kept_pairs: List[Pair] = []
    raw_pairs: List[Pair] = []
    for talk in range(talks):
        title = maker.pair(3, period=False)
        description = maker.pair(6)
        header = {
            "de": [
                f"<url>http://www.ted.com/talks/lang/de/talk_{talk}.html</url>",
                "<keywords>talks, wissenschaft, technik</keywords>",
                f"<talkid>{talk + 1}</talkid>",
                f"<title>Redner: {title[0]}</title>",
                f"<description>TED Talk Untertitel: {description[0]}</description>",
            ],
            "en": [
                f"<url>http://www.ted.com/talks/talk_{talk}.html</url>",
                "<keywords>talks, science, technology</keywords>",
                f"<talkid>{talk + 1}</talkid>",
                f"<title>Speaker: {title[1]}</title>",
                f"<description>TED Talk Subtitles: {description[1]}</description>",
            ],
        }
        for language in ("de", "en"):
            tags_lines[language] += header[language]
        header_pairs = [
            (f"Redner: {title[0]}", f"Speaker: {title[1]}"),
            (f"TED Talk Untertitel: {description[0]}", f"TED Talk Subtitles: {description[1]}"),
        ]
        body = maker.pairs(sentences_per_talk)
        planted: List[Pair] = []
        if talk == 0:
            planted = [overlong_pair(175), ratio_pair(2, 8), ("", ""), ("Nur Deutsch hier.", "")]
        for side, language in enumerate(("de", "en")):
            tags_lines[language] += [pair[side] for pair in body + planted]
        raw_pairs += header_pairs + body + planted
        kept_pairs += header_pairs + body
    members = {f"de-en/train.tags.de-en.{language}": lines_text(tags_lines[language]) for language in ("de", "en")}

    test_pairs: List[Pair] = []
    for number, test_set in enumerate(IWSLT_TEST_SETS):
        segments = maker.pairs(10 + 3 * number)
        if number == 0:
            segments.append(APOSTROPHE_SEGMENT)
        test_pairs += segments
        for side, language in enumerate(("de", "en")):
            members[f"de-en/{test_set}.de-en.{language}.xml"] = iwslt_xml(test_set, language, segments, side)
    members["de-en/README"] = "IWSLT 2014 evaluation campaign, fake copy for tests\n"

    archive = write_tgz(directory / "de-en.tgz", members)
    fixture = IwsltFixture(
        archive=archive,
        sha256=sha256_of(archive),
        raw_text_lines={language: [pair[side] for pair in raw_pairs] for side, language in enumerate(("de", "en"))},
    )
    for side, language in enumerate(("de", "en")):
        fixture.kept[language] = [tokenized(pair[side]).lower() for pair in kept_pairs]
        fixture.test[language] = [
            APOSTROPHE_SEGMENT_TOKENIZED[side] if pair == APOSTROPHE_SEGMENT else tokenized(pair[side]).lower()
            for pair in test_pairs
        ]
    return fixture


def iwslt_xml(test_set: str, language: str, segments: List[Pair], side: int) -> str:
    """An IWSLT dev/test XML file: two ``<doc>`` elements with metadata and ``<seg id>`` lines."""
    element = "srcset" if language == "de" else "refset"
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<mteval>",
        f'<{element} setid="{test_set}" srclang="german" trglang="english">',
    ]
    half = len(segments) // 2
    for doc, chunk in enumerate((segments[:half], segments[half:])):
        lines += [
            f'<doc docid="{500 + doc}" genre="lectures">',
            f"<url>http://www.ted.com/talks/doc_{doc}.html</url>",
            "<description>TED Talk Subtitles and Transcript: a talk</description>",
            "<keywords>talks, science</keywords>",
            f"<talkid>{500 + doc}</talkid>",
            "<title>A title line that is not a segment</title>",
        ]
        for number, pair in enumerate(chunk, start=1):
            padding = "  " if number % 3 == 0 else " "
            lines.append(f'<seg id="{number}">{padding}{pair[side]}{padding}</seg>')
        lines.append("</doc>")
    lines += [f"</{element}>", "</mteval>"]
    return lines_text(lines)


# SGM text keeps its entities (as input-from-sgm.perl); Moses then escapes the "&" again.
ENTITY_SEGMENT = ("Öl &amp; Gas.", "Oil &amp; gas.")
ENTITY_TOKENIZED = ("Öl &amp; amp ; Gas .", "Oil &amp; amp ; gas .")


@dataclass
class WmtFixture:
    archives: Dict[str, Path]  # key: europarl, commoncrawl, nc, dev
    sha256: Dict[str, str]
    train: Dict[str, List[str]]  # expected tokenized, cleaned training lines
    valid: Dict[str, List[str]]  # expected tokenized newstest2013
    test: Dict[str, List[str]]  # expected tokenized newstest2014
    raw_test: Dict[str, List[str]]  # expected newstest2014 text from the SGM files


def build_wmt16(directory: Path) -> WmtFixture:
    """Europarl v7, CommonCrawl, News Commentary v11 and WMT16 dev archives in their upstream layouts."""
    maker = SentenceMaker(seed=16)
    europarl, commoncrawl, nc = maker.pairs(100), maker.pairs(80), maker.pairs(60)
    long_word = "x" * 1001
    planted = {
        "europarl": [overlong_pair(80), ratio_pair(1, 20), ("", "")],
        "commoncrawl": [(f"Ein {long_word} Wort.", f"A {long_word} word."), ratio_pair(20, 1)],
        "nc": [("", "Only English here."), overlong_pair(90)],
    }
    # Kept boundary cases: exactly 80 tokens; a token ratio of exactly 9.
    boundary = [
        (" ".join(["Wort"] * 79) + ".", " ".join(["word"] * 79) + "."),  # 80 tokens each: kept
        ("Ja.", " ".join(["yes"] * 17) + "."),  # 2 against 18 tokens, ratio 9: kept
    ]
    europarl = europarl[:50] + planted["europarl"] + europarl[50:] + boundary[:1]
    commoncrawl = commoncrawl[:40] + planted["commoncrawl"] + commoncrawl[40:] + boundary[1:]
    nc = planted["nc"] + nc
    valid, test = maker.pairs(40), maker.pairs(50)
    valid.append(overlong_pair(90))  # valid and test are not cleaned: kept
    test.append(ENTITY_SEGMENT)

    archives = {
        "europarl": write_tgz(
            directory / "europarl-v7-de-en.tgz",
            {f"europarl-v7.de-en.{lang}": lines_text(side_lines(europarl, lang)) for lang in ("de", "en")},
        ),
        "commoncrawl": write_tgz(
            directory / "training-parallel-commoncrawl.tgz",
            {
                **{f"commoncrawl.de-en.{lang}": lines_text(side_lines(commoncrawl, lang)) for lang in ("de", "en")},
                "commoncrawl.de-en.annotation": "".join("fake\n" for _ in commoncrawl),
                "commoncrawl.fr-en.fr": "Une phrase.\n",
                "commoncrawl.fr-en.en": "A sentence.\n",
            },
        ),
        "nc": write_tgz(
            directory / "training-parallel-nc-v11.tgz",
            {
                **{
                    f"training-parallel-nc-v11/news-commentary-v11.de-en.{lang}": lines_text(side_lines(nc, lang))
                    for lang in ("de", "en")
                },
                "training-parallel-nc-v11/news-commentary-v11.cs-en.cs": "Věta.\n",
            },
        ),
        "dev": write_tgz(
            directory / "dev.tgz",
            {
                **{f"dev/newstest2013.{lang}": lines_text(side_lines(valid, lang)) for lang in ("de", "en")},
                "dev/newstest2014-deen-src.de.sgm": wmt_sgm("srcset", "de", side_lines(test, "de")),
                "dev/newstest2014-deen-ref.en.sgm": wmt_sgm("refset", "en", side_lines(test, "en")),
                "dev/newstest2014-deen-src.en.sgm": wmt_sgm("srcset", "en", ["Wrong direction."]),
                "dev/newstest2015-deen-src.de.sgm": wmt_sgm("srcset", "de", ["Falsches Jahr."]),
            },
        ),
    }
    dropped = {pair for pairs in planted.values() for pair in pairs}
    train = [pair for pair in europarl + commoncrawl + nc if pair not in dropped]
    return WmtFixture(
        archives=archives,
        sha256={name: sha256_of(path) for name, path in archives.items()},
        train={lang: [tokenized(text) for text in side_lines(train, lang)] for lang in ("de", "en")},
        valid={lang: [tokenized(text) for text in side_lines(valid, lang)] for lang in ("de", "en")},
        test={
            lang: [tokenized(text) for text in side_lines(test[:-1], lang)] + [side_lines([ENTITY_TOKENIZED], lang)[0]]
            for lang in ("de", "en")
        },
        raw_test={lang: side_lines(test, lang) for lang in ("de", "en")},
    )


def side_lines(pairs: List[Pair], language: str) -> List[str]:
    side = 0 if language == "de" else 1
    return [pair[side] for pair in pairs]


def wmt_sgm(element: str, language: str, segments: List[str]) -> str:
    """A WMT newstest SGM file: ``<seg id="N">`` lines inside ``<doc>`` and ``<p>`` elements."""
    lines = [f'<{element} setid="newstest2014" srclang="any" trglang="{language}">']
    half = len(segments) // 2
    for doc, chunk in enumerate((segments[:half], segments[half:])):
        lines += [f'<doc sysid="ref" docid="{1000 + doc}-bbc" genre="news" origlang="en">', "<p>"]
        offset = 1 if doc == 0 else half + 1
        lines += [f'<seg id="{offset + i}">{text}</seg>' for i, text in enumerate(chunk)]
        lines += ["</p>", "</doc>"]
    lines.append(f"</{element}>")
    return lines_text(lines)


def with_real_files(archive: Path, out: Path, files: Dict[str, Path]) -> Path:
    """A copy of the fake ``archive`` at ``out`` in which each member named in ``files`` holds the
    bytes of that real file (added where the fake has no such member)."""
    members: Dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            members[member.name] = tar.extractfile(member).read()
    members.update({name: path.read_bytes() for name, path in files.items()})
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members.items():
            add_member(tar, name, data)
    return out
