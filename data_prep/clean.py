"""Length and ratio filter of a parallel corpus, with the rules of Moses' ``clean-corpus-n.perl``.

For each line pair, as that script does:

1. Factor bars: if the first line of either side contains ``|``, the corpus is
   factored and bars are kept; otherwise every ``|`` is deleted.
2. White space (Perl ``\\s``) runs become one space; leading/trailing space is removed.
3. The pair is dropped if either side is then empty, if either side has more than
   ``max_tokens`` or fewer than ``min_tokens`` space-separated tokens, if the token
   ratio of either side over the other exceeds ``ratio`` (unless ``ratio`` is None,
   ``-ignore-ratio``), or if either side has a run of more than ``max_word_length``
   characters that are neither white space nor ``|``.
4. Kept pairs are written in their normalised form, lines of both sides together.

The options ``-lc`` and ``-ignore-xml`` of the Perl script are not provided; the
recipes, like fairseq's and Google's scripts, do not use them.

CLI (argument order of the Perl script)::

    python -m data_prep.clean [--ratio R] [--max-word-length N] CORPUS L1 L2 CLEAN_CORPUS MIN MAX

reads ``CORPUS.L1`` and ``CORPUS.L2`` and writes ``CLEAN_CORPUS.L1`` and ``CLEAN_CORPUS.L2``.
"""

import argparse
import functools
import re
import sys
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Tuple

from data_prep.cli import DataPrepError, run_main
from data_prep.textio import PERL_SPACE, atomic_output, count_lines, read_lines

_SPACE_RUN = re.compile(f"[{PERL_SPACE}]+")
_BLANK_FACTOR = re.compile(r"[ |]\|")


@dataclass(frozen=True)
class CleaningRules:
    """Limits of ``clean-corpus-n.perl [-ratio R] ... MIN MAX`` (its defaults: ratio 9, word length 1000)."""

    min_tokens: int
    max_tokens: int
    ratio: Optional[float] = 9.0
    max_word_length: int = 1000


def normalize(line: str, factored: bool) -> str:
    """The line as the Perl script compares and writes it: bars removed unless factored, spaces squeezed."""
    if not factored:
        line = line.replace("|", "")
    line = _SPACE_RUN.sub(" ", line)
    if line.startswith(" "):
        line = line[1:]
    if line.endswith(" "):
        line = line[:-1]
    return line


def token_count(normalized_line: str) -> int:
    """Number of tokens of a normalised line, as the script's ``split(/ /, $line)``."""
    return len(normalized_line.split(" ")) if normalized_line else 0


def keep_pair(source: str, target: str, rules: CleaningRules) -> bool:
    """Whether the script keeps a pair of normalised lines."""
    if not source or not target:
        return False
    source_count, target_count = token_count(source), token_count(target)
    if max(source_count, target_count) > rules.max_tokens or min(source_count, target_count) < rules.min_tokens:
        return False
    if rules.ratio is not None and (
        target_count / source_count > rules.ratio or source_count / target_count > rules.ratio
    ):
        return False
    overlong_word = _overlong_word(rules.max_word_length)
    return not (overlong_word.search(source) or overlong_word.search(target))


@functools.lru_cache(maxsize=None)
def _overlong_word(max_word_length: int) -> "re.Pattern[str]":
    """Pattern of a run of more than ``max_word_length`` characters that are neither space nor ``|``."""
    return re.compile(f"[^{PERL_SPACE}|]{{{max_word_length + 1}}}")


def clean_pairs(
    source_lines: Iterable[str],
    target_lines: Iterable[str],
    rules: CleaningRules,
    names: Tuple[str, str] = ("source", "target"),
) -> Iterator[Tuple[str, str]]:
    """Yield the normalised pairs the script keeps, in input order.

    ``names`` label the two sides in error messages. Raises ``DataPrepError`` when
    the sides differ in length, or when a kept factored line has a blank factor.
    """
    factored = False
    for number, (source, target) in enumerate(zip_longest(source_lines, target_lines), start=1):
        if source is None or target is None:
            shorter = names[0] if source is None else names[1]
            raise DataPrepError(f"{shorter} has fewer lines than its pair ({number - 1}); the sides must align")
        if number == 1:
            factored = "|" in source or "|" in target
        source, target = normalize(source, factored), normalize(target, factored)
        if not keep_pair(source, target, rules):
            continue
        for name, line in zip(names, (source, target)):
            if _BLANK_FACTOR.search(line):
                raise DataPrepError(f"{name} line {number} has a blank factor: {line!r}")
        yield source, target


def clean_corpus(corpus: Path, lang1: str, lang2: str, output: Path, rules: CleaningRules) -> Tuple[int, int]:
    """Clean ``corpus.lang1``/``corpus.lang2`` into ``output.lang1``/``output.lang2``.

    Returns (pairs read, pairs kept). Each output file is written atomically.
    """
    inputs = [Path(f"{corpus}.{lang}") for lang in (lang1, lang2)]
    for path in inputs:
        if not path.is_file():
            raise DataPrepError(f"{path}: no such file (expected CORPUS.{lang1} and CORPUS.{lang2})")
    kept = 0
    with atomic_output(f"{output}.{lang1}") as output1, atomic_output(f"{output}.{lang2}") as output2:
        pairs = clean_pairs(read_lines(inputs[0]), read_lines(inputs[1]), rules, (str(inputs[0]), str(inputs[1])))
        for line1, line2 in pairs:
            output1.write(line1 + "\n")
            output2.write(line2 + "\n")
            kept += 1
    return count_lines(inputs[0]), kept


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.clean", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=9.0, help="maximum token ratio (default 9)")
    parser.add_argument("--ignore-ratio", action="store_true", help="do not filter on the token ratio")
    parser.add_argument("--max-word-length", type=int, default=1000, help="longest word kept (default 1000)")
    parser.add_argument("corpus", type=Path, help="input prefix: reads CORPUS.L1 and CORPUS.L2")
    parser.add_argument("lang1")
    parser.add_argument("lang2")
    parser.add_argument("clean_corpus", type=Path, help="output prefix: writes CLEAN_CORPUS.L1 and .L2")
    parser.add_argument("min_tokens", type=int)
    parser.add_argument("max_tokens", type=int)
    args = parser.parse_args(argv)
    rules = CleaningRules(
        args.min_tokens, args.max_tokens, None if args.ignore_ratio else args.ratio, args.max_word_length
    )
    read, kept = clean_corpus(args.corpus, args.lang1, args.lang2, args.clean_corpus, rules)
    print(f"clean: {args.corpus}.{{{args.lang1},{args.lang2}}}: {read} pairs read, {kept} kept", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
