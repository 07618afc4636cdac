"""The numbers of a fairseq-train log in ``--log-format simple`` (what recipes/multi30k/train.sh
writes to ``train.log``): the ``train_inner`` lines (every ``--log-interval`` updates), the
``valid`` lines, the per-epoch ``train`` lines, and how long each fairseq-train process ran and how
much of that time the run kept."""

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Tuple

INNER_LINE = re.compile(r"\| train_inner \| epoch (\d+):\s+\d+ / \d+ (.*)$")
VALID_LINE = re.compile(r"\| valid \| epoch (\d+) \| valid on 'valid' subset \| (.*)$")
EPOCH_LINE = re.compile(r"\| train \| epoch (\d+) \| (.*)$")
# the lines of a running fairseq-train (not those other modules log while it imports, which a
# resumed run's log would count to the process before it)
TRAINING_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| \w+ \| "
                           r"(fairseq_cli\.train|fairseq\.trainer|fairseq\.checkpoint_utils|train_inner|train|valid) \| ")
PROCESS_START = re.compile(r"\| fairseq_cli\.train \| \{")  # the configuration fairseq-train logs first
CHECKPOINT_SAVED = re.compile(r"\| fairseq\.checkpoint_utils \| Saved checkpoint ")

Record = Dict[str, float]


@dataclass(frozen=True)
class TrainingLog:
    """Each list is ordered by ``num_updates``, one record per update number (the last one logged:
    a resumed run logs again the updates it redid after its last checkpoint)."""

    train: List[Record]  # train_inner lines: loss, lr, sage_* ... averaged since the previous line
    valid: List[Record]  # validations: loss, nll_loss, ... of the whole valid set
    epochs: List[Record]  # end-of-epoch train lines: train_wall, wall (cumulative seconds), ...
    process_seconds: List[float]  # per fairseq-train process (a resumed run has several): from its
    # configuration line to its last line
    kept_seconds: List[float]  # per process, the part of process_seconds whose training the run kept:
    # all of the last process; of an earlier one, up to its last saved checkpoint (0 without one)

    @property
    def wall_seconds(self) -> float:
        """Wall-clock time the run's training took: the sum of :attr:`kept_seconds`, each process from its
        configuration line (after the imports) on, with loading, training, validations and checkpoints.
        What an interrupted process did after its last saved checkpoint is left out, since the next
        process resumes from that checkpoint and does it again (and is timed doing it).

        Read from the log's timestamps, because fairseq's own ``wall`` meter reads 0 after a run
        resumes from a checkpoint."""
        return sum(self.kept_seconds)


def _fields(pairs: List[List[str]], epoch: str) -> Record:
    record = {"epoch": float(epoch)}
    for key, value in pairs:
        try:
            record[key] = float(value)
        except ValueError:
            continue  # non-numeric fields, e.g. the run's name in other log formats
    return record


def _by_update(records: List[Record]) -> List[Record]:
    latest = {record["num_updates"]: record for record in records if "num_updates" in record}
    return [latest[update] for update in sorted(latest)]


def _process_spans(lines: List[str]) -> Tuple[List[float], List[float]]:
    """Per fairseq-train process: (its seconds from the first line to the last, those up to its last
    saved checkpoint; for the last process, all of them)."""
    spans: List[List[datetime]] = []  # per process: first line, last line, last checkpoint saved
    for line in lines:
        if not (stamp := TRAINING_LINE.match(line)):
            continue
        time = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")
        if PROCESS_START.search(line) or not spans:
            spans.append([time, time, time])
        spans[-1][1] = time
        if CHECKPOINT_SAVED.search(line):
            spans[-1][2] = time
    whole = [(last - first).total_seconds() for first, last, _ in spans]
    kept = [(saved - first).total_seconds() for first, _, saved in spans[:-1]] + whole[-1:]
    return whole, kept


def parse_train_log(text: str) -> TrainingLog:
    """The train_inner, valid and epoch records of a fairseq-train log, and its processes' durations."""
    train, valid, epochs = [], [], []
    lines = text.splitlines()
    for line in lines:
        if match := INNER_LINE.search(line):
            pairs = [item.split("=", 1) for item in match.group(2).split(", ") if "=" in item]
            train.append(_fields(pairs, match.group(1)))
        elif match := VALID_LINE.search(line):
            pairs = [item.split(" ", 1) for item in match.group(2).split(" | ") if " " in item]
            valid.append(_fields(pairs, match.group(1)))
        elif match := EPOCH_LINE.search(line):
            pairs = [item.split(" ", 1) for item in match.group(2).split(" | ") if " " in item]
            epochs.append(_fields(pairs, match.group(1)))
    return TrainingLog(_by_update(train), _by_update(valid), _by_update(epochs), *_process_spans(lines))


def read_train_log(path: Path) -> TrainingLog:
    """:func:`parse_train_log` of the file ``path``; empty lists if it does not exist."""
    return parse_train_log(path.read_text() if path.is_file() else "")
