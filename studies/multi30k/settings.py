"""The settings of a study, as ``run_study.sh`` records them in ``WORKDIR/study.env``."""

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

SETTINGS_FILE = "study.env"
BUDGET_FILE = "budget.json"  # the converged study's budget phase: MAX_UPDATE=budget until it chose
WIDENED_FILE = "widened.json"  # the lrs plan.py added to a grid whose best was at an edge
BEST_MODEL = "checkpoint_best"


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

    @property
    def selection_model(self) -> str:
        """The checkpoint (file name without .pt) whose validation BLEU selects the best settings."""
        return self.values.get("SELECTION_MODEL", BEST_MODEL)


REQUIRED_KEYS = (
    "ADAM_LRS", "SAGE_LRS", "SAGE_BETA0S", "SEEDS", "MAX_UPDATE", "WARMUP_UPDATES", "MAX_TOKENS",
    "LOG_INTERVAL", "MAX_TRAIN_LINES", "MAX_TEST_LINES", "SPM_VOCAB_SIZE",
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
    return StudySettings({**values, **derived_settings(workdir, values)})


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise StudyError(f"{path}: not valid JSON ({error}); delete it and run the study again") from None


def derived_settings(workdir: Path, values: Dict[str, str]) -> Dict[str, str]:
    """The settings the study chose itself: MAX_UPDATE once the budget phase chose it
    (WORKDIR/budget.json), the grids with the lrs added by widening (WORKDIR/widened.json)."""
    derived = {}
    if values.get("MAX_UPDATE") == "budget" and (workdir / BUDGET_FILE).is_file():
        derived["MAX_UPDATE"] = str(read_json(workdir / BUDGET_FILE)["budget"])
    if (workdir / WIDENED_FILE).is_file():
        for key, added in read_json(workdir / WIDENED_FILE).items():
            derived[key] = " ".join([*values[key].split(), *added])
    return derived


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(data)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless the file already holds it; True if written."""
    if path.is_file() and path.read_text() == text:
        return False
    write_atomically(path, text.encode())
    return True


def run_cli(description: str, action: Callable[[argparse.Namespace], None], argv: Optional[Sequence[str]] = None,
            options: Callable[[argparse.ArgumentParser], None] = lambda parser: None) -> int:
    """The command line of a study module: WORKDIR and ``options``; ``action(args)``; a StudyError
    becomes its one-line message and exit status 1."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("workdir", type=Path)
    options(parser)
    args = parser.parse_args(argv)
    try:
        action(args)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
