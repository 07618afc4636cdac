"""Train/valid split by line stride, as fairseq's prepare-iwslt14.sh.

fairseq's ``awk '{if (NR%23 == 0) print $0; }'`` sends line numbers 23, 46, 69, ...
(1-based) to valid and every other line to train.

CLI::

    python -m data_prep.split [--every 23] INPUT TRAIN_OUTPUT VALID_OUTPUT
"""

import argparse
import os
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

from data_prep.cli import DataPrepError, run_main
from data_prep.textio import atomic_output, read_lines


def is_valid_line(line_number: int, every: int) -> bool:
    """Whether the 1-based ``line_number`` goes to valid: ``line_number % every == 0``."""
    return line_number % every == 0


def split_every_nth(lines: Iterable[str], every: int = 23) -> Tuple[List[str], List[str]]:
    """Return (train, valid): valid holds lines number ``every``, ``2 * every``, ... (1-based)."""
    train: List[str] = []
    valid: List[str] = []
    for number, line in enumerate(lines, start=1):
        (valid if is_valid_line(number, every) else train).append(line)
    return train, valid


def _same_file(a: str, b: str) -> bool:
    """Whether the paths ``a`` and ``b`` name one file (the same path, a link to it, a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def split_file(input_path: str, train_path: str, valid_path: str, every: int = 23) -> Tuple[int, int]:
    """Split the lines of ``input_path`` into two files atomically; return (train lines, valid lines).

    The three paths must name three files: an output that is the other output, or the input, would
    lose lines when it is renamed into place."""
    if every < 1:
        raise DataPrepError(f"--every {every}: must be a positive line stride")
    for (name_a, a), (name_b, b) in [(("TRAIN_OUTPUT", train_path), ("VALID_OUTPUT", valid_path)),
                                     (("INPUT", input_path), ("TRAIN_OUTPUT", train_path)),
                                     (("INPUT", input_path), ("VALID_OUTPUT", valid_path))]:
        if _same_file(str(a), str(b)):
            raise DataPrepError(f"{name_a} and {name_b} are one file ({b}); give three different paths")
    counts = [0, 0]
    with atomic_output(train_path) as train, atomic_output(valid_path) as valid:
        for number, line in enumerate(read_lines(input_path), start=1):
            goes_to_valid = is_valid_line(number, every)
            (valid if goes_to_valid else train).write(line + "\n")
            counts[goes_to_valid] += 1
    return counts[0], counts[1]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=23, help="valid gets every N-th line (default 23)")
    parser.add_argument("input")
    parser.add_argument("train_output")
    parser.add_argument("valid_output")
    args = parser.parse_args(argv)
    train, valid = split_file(args.input, args.train_output, args.valid_output, args.every)
    print(f"split: {args.input}: {train} train, {valid} valid lines", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
