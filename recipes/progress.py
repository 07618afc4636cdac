"""One console line with the progress of running fairseq-train processes, redrawn in place.

    python recipes/progress.py NAME=LOG:MAX_UPDATE [NAME=LOG:MAX_UPDATE ...]   (MAX_UPDATE may be ?)

Reads the last ``train_inner`` line of each LOG every few seconds and shows, e.g.,
``  adam 325/700 loss 5.12 | adam_sage 300/700 loss 5.20 | 1:25``, until it is terminated (the
recipes stop it when the trainings end). Draws only on a terminal; elsewhere it exits at once.
"""

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "multi30k"))
from train_log import INNER_LINE  # noqa: E402  (recipes/multi30k/train_log.py: the simple log format's lines)

TAIL_BYTES = 1 << 16


def last_update(log: Path) -> str:
    """``num_updates`` and ``loss`` of the last train_inner line of ``log`` ('0' if there is none)."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - TAIL_BYTES))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "0"
    for line in reversed(lines):
        if match := INNER_LINE.search(line):
            fields = dict(item.split("=", 1) for item in match.group(2).split(", ") if "=" in item)
            return f"{fields.get('num_updates', '?')} loss {fields.get('loss', '?')}"
    return "0"


def status_line(runs, seconds: float) -> str:
    parts = []
    for name, log, total in runs:
        updates, _, loss = last_update(log).partition(" ")
        parts.append(f"{name} {updates}/{total}{' ' + loss if loss else ''}")
    return "  " + " | ".join(parts) + f" | {int(seconds) // 60}:{int(seconds) % 60:02d}"


def parse(argument: str):
    name, _, rest = argument.partition("=")
    log, _, total = rest.rpartition(":")
    if not (name and log and (total.isdigit() or total == "?")):
        sys.exit(f"error: {argument!r}: give NAME=LOG:MAX_UPDATE")
    return name, Path(log), total


def main(argv) -> None:
    runs = [parse(argument) for argument in argv]
    if not sys.stdout.isatty():
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start, width = time.monotonic(), 0
    try:
        while True:
            line = status_line(runs, time.monotonic() - start)
            sys.stdout.write("\r" + line.ljust(width))
            sys.stdout.flush()
            width = len(line)
            time.sleep(2)
    finally:
        sys.stdout.write("\r" + " " * width + "\r")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
