"""Readers of fairseq's console output that several test files share."""

import re

TRAIN_LINE = re.compile(r"\| train_inner \| .*?loss=([\d.]+).*?num_updates=(\d+), lr=([\d.e-]+)")
"""A ``train_inner`` line of ``--log-format simple``: its loss, num_updates and lr."""
BLEU_LINE = re.compile(r"^Generate test with beam=5: BLEU4 = ([\d.]+),", re.M)
"""fairseq-generate's closing BLEU line (beam 5)."""


def train_log_of_text(text: str) -> list:
    """(num_updates, loss, lr) of every train_inner line of a fairseq-train log."""
    return [(int(u), float(loss), float(lr)) for loss, u, lr in TRAIN_LINE.findall(text)]


def train_log(proc) -> list:
    """(num_updates, loss, lr) of every train_inner line of a finished fairseq-train process."""
    return train_log_of_text(proc.stdout + proc.stderr)
