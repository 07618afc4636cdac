"""The settings of a study, as ``run_study.sh`` records them in ``WORKDIR/study.env``."""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

from fairseq_sage.files import write_atomic

SETTINGS_FILE = "study.env"


class StudyError(Exception):
    """A missing or malformed study file; the message names it and what to run."""


@dataclass(frozen=True)
class StudySettings:
    """One study's grid, seeds, budget and analysis settings; ``values`` holds every KEY=VALUE as
    written (lists space-separated), ``overridden`` the keys the caller set instead of the defaults."""

    values: Dict[str, str]

    def words(self, key: str) -> Tuple[str, ...]:
        return tuple(self.values[key].split())

    @property
    def adam_lrs(self) -> Tuple[str, ...]:
        return self.words("ADAM_LRS")

    @property
    def sage_lrs(self) -> Tuple[str, ...]:
        return self.words("SAGE_LRS")

    @property
    def sage_beta0s(self) -> Tuple[str, ...]:
        return self.words("SAGE_BETA0S")

    @property
    def seeds(self) -> Tuple[int, ...]:
        return tuple(int(seed) for seed in self.words("SEEDS"))

    @property
    def overridden(self) -> Tuple[str, ...]:
        return self.words("OVERRIDDEN")

    def integer(self, key: str) -> int:
        return int(self.values[key])


REQUIRED_KEYS = (
    "ADAM_LRS", "SAGE_LRS", "SAGE_BETA0S", "SEEDS", "MAX_UPDATE", "WARMUP_UPDATES", "MAX_TOKENS",
    "SAVE_INTERVAL_UPDATES", "LOG_INTERVAL", "MAX_TRAIN_LINES", "MAX_TEST_LINES", "SPM_VOCAB_SIZE",
    "PRUNE_LEVELS", "PRUNE_SUBSET", "PRUNE_BATCHES", "TRAIN_FLAGS", "DATA", "OVERRIDDEN",
)  # fmt: skip


def read_settings(workdir: Path) -> StudySettings:
    """The settings recorded in ``WORKDIR/study.env``."""
    path = workdir / SETTINGS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise StudyError(f"{path} missing; run bash studies/multi30k/run_study.sh {workdir} first") from None
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise StudyError(f"{path} has no {', '.join(missing)}; run bash studies/multi30k/run_study.sh again")
    return StudySettings(values)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`fairseq_sage.files.write_atomic`), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless the file already holds it; True if written."""
    if path.is_file() and path.read_text() == text:
        return False
    write_atomically(path, text.encode())
    return True
