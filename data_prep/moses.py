"""Moses tokenisation, detokenisation and lowercasing, with sacremoses.

Defaults match how fairseq's prepare-iwslt14.sh and Google's wmt16_en_de.sh call
``tokenizer.perl -l LANG``: no aggressive hyphen splitting (``-a``) and XML escaping
on (``&apos;``, ``&quot;``, ``&amp;``, ``&lt;``, ``&gt;``, ``&#124;``, ``&#91;``,
``&#93;``). Like ``tokenizer.perl``, a line that is empty or only white space is
passed through untouched. Lowercasing is ``lowercase.perl`` (Perl's ``lc``).

CLI::

    python -m data_prep.moses tokenize --lang de [--aggressive-dash-splits] [--no-escape]
                                       [--lowercase] [--workers N] [INPUT [OUTPUT]]
    python -m data_prep.moses detokenize --lang en [--no-unescape] [INPUT [OUTPUT]]
    python -m data_prep.moses lowercase [INPUT [OUTPUT]]

INPUT and OUTPUT default to ``-`` (standard input/output); a file OUTPUT is written
atomically.
"""

import argparse
import functools
import re
import sys
from typing import Optional, Sequence

from sacremoses import MosesDetokenizer, MosesTokenizer

from data_prep.cli import run_main
from data_prep.textio import PERL_SPACE, STDIO, transform_file

_BLANK_LINE = re.compile(f"[{PERL_SPACE}]*")
_WORD_WITH_FINAL_PERIOD = re.compile(r"(\S+)\.")


class _MosesTokenizer(MosesTokenizer):
    """sacremoses' tokenizer brought up to the current ``tokenizer.perl``, and faster.

    - ``tokenizer.perl`` splits the period off the last word of a line unconditionally
      (Moses commit 9fc964d, 2018: "split final dots unconditionally"); sacremoses still
      keeps it on when the word is a known abbreviation or contains a period ("St.",
      "A.", "avrovulcan.com."), as Moses did before.
    - sacremoses rebuilds a set of about ten thousand characters on every call of
      ``isanyalpha``/``islower``, which takes 90% of its run time; here the sets are
      built once and the answers are the same.
    """

    _LOWER = frozenset(MosesTokenizer.IsLower)
    _ALPHA = frozenset(MosesTokenizer.IsAlpha)

    def islower(self, text: str) -> bool:
        return self._LOWER.issuperset(text)

    def isanyalpha(self, text: str) -> bool:
        return not self._ALPHA.isdisjoint(text)

    def handles_nonbreaking_prefixes(self, text: str) -> str:
        tokens = super().handles_nonbreaking_prefixes(text).split(" ")
        final_word = _WORD_WITH_FINAL_PERIOD.fullmatch(tokens[-1])
        if final_word:
            tokens[-1] = final_word.group(1) + " ."
        return " ".join(tokens)


@functools.lru_cache(maxsize=None)
def _tokenizer(lang: str) -> MosesTokenizer:
    return _MosesTokenizer(lang=lang)


@functools.lru_cache(maxsize=None)
def _detokenizer(lang: str) -> MosesDetokenizer:
    return MosesDetokenizer(lang=lang)


def tokenize(line: str, lang: str, aggressive_dash_splits: bool = False, escape: bool = True) -> str:
    """Moses ``tokenizer.perl -l LANG`` output for one line (``-a`` and ``-no-escape`` as flags)."""
    if _BLANK_LINE.fullmatch(line):
        return line
    return _tokenizer(lang).tokenize(
        line, aggressive_dash_splits=aggressive_dash_splits, return_str=True, escape=escape
    )


def lowercase(line: str) -> str:
    """Moses ``lowercase.perl`` output for one line."""
    return line.lower()


def tokenize_lowercase(line: str, lang: str, aggressive_dash_splits: bool = False, escape: bool = True) -> str:
    """``tokenize`` followed by ``lowercase``: fairseq's ``tokenizer.perl | lowercase.perl``."""
    return lowercase(tokenize(line, lang, aggressive_dash_splits, escape))


def detokenize(line: str, lang: str, unescape: bool = True) -> str:
    """Moses ``detokenizer.perl -l LANG`` output for one tokenized line."""
    return _detokenizer(lang).detokenize(line.split(), return_str=True, unescape=unescape)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_prep.moses", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_io(command: argparse.ArgumentParser) -> None:
        command.add_argument("input", nargs="?", default=STDIO, help="input text file (default: stdin)")
        command.add_argument("output", nargs="?", default=STDIO, help="output text file (default: stdout)")

    tokenize_command = commands.add_parser("tokenize", help="tokenize.perl -l LANG")
    tokenize_command.add_argument("--lang", "-l", required=True, help="language code, e.g. de or en")
    tokenize_command.add_argument(
        "--aggressive-dash-splits", "-a", action="store_true", help="split hyphens inside words (Moses -a)"
    )
    tokenize_command.add_argument("--no-escape", action="store_true", help="do not escape XML characters")
    tokenize_command.add_argument("--lowercase", action="store_true", help="lowercase after tokenizing")
    tokenize_command.add_argument("--workers", type=int, default=1, help="processes to use (default 1)")
    add_io(tokenize_command)

    detokenize_command = commands.add_parser("detokenize", help="detokenizer.perl -l LANG")
    detokenize_command.add_argument("--lang", "-l", required=True, help="language code, e.g. de or en")
    detokenize_command.add_argument("--no-unescape", action="store_true", help="keep XML escapes")
    add_io(detokenize_command)

    lowercase_command = commands.add_parser("lowercase", help="lowercase.perl")
    add_io(lowercase_command)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    if args.command == "tokenize":
        function = functools.partial(
            tokenize_lowercase if args.lowercase else tokenize,
            lang=args.lang,
            aggressive_dash_splits=args.aggressive_dash_splits,
            escape=not args.no_escape,
        )
        transform_file(function, args.input, args.output, workers=args.workers)
    elif args.command == "detokenize":
        function = functools.partial(detokenize, lang=args.lang, unescape=not args.no_unescape)
        transform_file(function, args.input, args.output)
    else:
        transform_file(lowercase, args.input, args.output)


if __name__ == "__main__":
    sys.exit(run_main(main))
