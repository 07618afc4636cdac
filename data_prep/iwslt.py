"""Plain text of the IWSLT'14 TED files, as fairseq's prepare-iwslt14.sh extracts it.

Training text (``train.tags.de-en.{de,en}``): lines containing ``<url>``, ``<talkid>``
or ``<keywords>`` are dropped (fairseq's ``grep -v``) and the ``<title>``,
``</title>``, ``<description>`` and ``</description>`` tags are deleted, keeping the
title and description text as training lines (fairseq's ``sed``). No other line is
dropped: fairseq's IWSLT'14 script greps out only those three tags (its IWSLT'17
script drops more), and its published split sizes depend on that.

Dev/test text (``IWSLT14.TED*.xml``): every line containing ``<seg id`` with the
``<seg id="N">`` tag, the ``</seg>`` tag and the (ASCII) white space around them
deleted, and ``’`` replaced by ``'``.

CLI::

    python -m data_prep.iwslt train-text TRAIN_TAGS_FILE OUTPUT
    python -m data_prep.iwslt test-text --output OUTPUT XML_FILE [XML_FILE ...]

``test-text`` concatenates the segments of the XML files in the order given.
"""

import argparse
import itertools
import re
import sys
from typing import Iterable, Iterator, Optional, Sequence

from data_prep.cli import run_main
from data_prep.textio import ASCII_SPACE, read_lines, write_lines

DROPPED_LINE_TAGS = ("<url>", "<talkid>", "<keywords>")
DELETED_TAGS = ("<title>", "</title>", "<description>", "</description>")

_SEG_OPEN = re.compile(f'<seg id="[0-9]*">[{ASCII_SPACE}]*')
_SEG_CLOSE = re.compile(f"[{ASCII_SPACE}]*</seg>[{ASCII_SPACE}]*")


def train_text(lines: Iterable[str]) -> Iterator[str]:
    """Lines of a ``train.tags`` file without metadata lines and title/description tags."""
    for line in lines:
        if any(tag in line for tag in DROPPED_LINE_TAGS):
            continue
        for tag in DELETED_TAGS:
            line = line.replace(tag, "")
        yield line


def xml_segments(lines: Iterable[str]) -> Iterator[str]:
    """Text of the ``<seg id="N">`` lines of an IWSLT XML file."""
    for line in lines:
        if "<seg id" in line:
            yield _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line)).replace("\u2019", "'")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.iwslt", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_command = commands.add_parser("train-text", help="text of a train.tags file")
    train_command.add_argument("input", help="train.tags.de-en.de or .en")
    train_command.add_argument("output")
    test_command = commands.add_parser("test-text", help="segments of IWSLT XML files, concatenated")
    test_command.add_argument("--output", required=True)
    test_command.add_argument("inputs", nargs="+", help="IWSLT14.TED*.xml files, in output order")
    args = parser.parse_args(argv)
    if args.command == "train-text":
        count = write_lines(args.output, train_text(read_lines(args.input)))
    else:
        segments = itertools.chain.from_iterable(xml_segments(read_lines(path)) for path in args.inputs)
        count = write_lines(args.output, segments)
    print(f"iwslt {args.command}: {count} lines -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
