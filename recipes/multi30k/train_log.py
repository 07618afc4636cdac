"""The numbers of a fairseq-train log in ``--log-format simple`` (what recipes/multi30k/train.sh
writes to ``train.log``; the quickstart's learning curves and the recipes' progress line read it):
the ``train_inner`` lines (every ``--log-interval`` updates) and the ``valid`` lines."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

INNER_LINE = re.compile(r"\| train_inner \| epoch (\d+):\s+\d+ / \d+ (.*)$")
VALID_LINE = re.compile(r"\| valid \| epoch (\d+) \| valid on 'valid' subset \| (.*)$")

Record = Dict[str, float]


@dataclass(frozen=True)
class TrainingLog:
    """Each list is ordered by ``num_updates``, one record per update number (the last one logged:
    a resumed run logs again the updates it redid after its last checkpoint)."""

    train: List[Record]  # train_inner lines: loss, lr, sage_* ... averaged since the previous line
    valid: List[Record]  # validations: loss, nll_loss, ... of the whole valid set


def _fields(pairs: List[List[str]], epoch: str) -> Record:
    record = {"epoch": float(epoch)}
    for key, value in pairs:
        try:
            record[key] = float(value)
        except ValueError:
            continue  # non-numeric fields
    return record


def _by_update(records: List[Record]) -> List[Record]:
    latest = {record["num_updates"]: record for record in records if "num_updates" in record}
    return [latest[update] for update in sorted(latest)]


def read_train_log(path: Path) -> TrainingLog:
    """The train_inner and valid records of the log at ``path`` (empty lists if it does not exist)."""
    train, valid = [], []
    for line in (path.read_text() if path.is_file() else "").splitlines():
        if match := INNER_LINE.search(line):
            train.append(_fields([item.split("=", 1) for item in match.group(2).split(", ") if "=" in item], match.group(1)))
        elif match := VALID_LINE.search(line):
            valid.append(_fields([item.split(" ", 1) for item in match.group(2).split(" | ") if " " in item], match.group(1)))
    return TrainingLog(_by_update(train), _by_update(valid))
