"""Segment text of WMT SGM files, as Moses' ``input-from-sgm.perl`` extracts it.

For each ``<seg ...>`` element (any attributes, tag name case-insensitive): a segment
whose closing ``</seg>`` is on a later line is joined with the following lines (with
no separator, as the Perl script does); the text between the opening tag and the last
``</seg>`` of the line is taken, its ASCII white space runs squeezed to one space and
trimmed. Character entities (``&amp;`` ...) are left as they are, as the Perl script
and sacreBLEU leave them. Lines without a segment are skipped.

CLI::

    python -m data_prep.sgm INPUT_SGM OUTPUT
"""

import argparse
import re
import sys
from typing import Iterable, Iterator, Optional, Sequence

from data_prep.cli import run_main
from data_prep.textio import ASCII_SPACE, read_lines, write_lines

_OPEN_TAG_AT_END = re.compile(f"<seg[^>]+>[{ASCII_SPACE}]*$", re.IGNORECASE)
_OPEN_TAG = re.compile("<seg[^>]+>", re.IGNORECASE)
_SEGMENT = re.compile(f"<seg[^>]+>[{ASCII_SPACE}]*(.*)[{ASCII_SPACE}]*</seg>", re.IGNORECASE)
_SPACE_RUN = re.compile(f"[{ASCII_SPACE}]+")


def sgm_segments(lines: Iterable[str]) -> Iterator[str]:
    """Text of each ``<seg>`` element of SGM lines, in order."""
    line_iterator = iter(lines)
    for line in line_iterator:
        while _OPEN_TAG_AT_END.search(line):
            line, complete = _join_next(line, line_iterator)
            if not complete:
                break
        while _OPEN_TAG.search(line) and not _SEGMENT.search(line):
            line, complete = _join_next(line, line_iterator)
            if not complete:
                break
        segment = _SEGMENT.search(line)
        if segment:
            yield _SPACE_RUN.sub(" ", segment.group(1)).strip(" ")


def _join_next(line: str, line_iterator: Iterator[str]) -> "tuple[str, bool]":
    """``line`` with the next line appended, and False when there was none."""
    next_line = next(line_iterator, None)
    return (line, False) if next_line is None else (line + next_line, True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.sgm", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="SGM file, e.g. newstest2014-deen-src.de.sgm")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    count = write_lines(args.output, sgm_segments(read_lines(args.input)))
    print(f"sgm: {count} segments -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
