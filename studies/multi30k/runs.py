"""The runs of a study: their settings, names and folders (``WORKDIR/runs/NAME``)."""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .settings import BEST_MODEL, StudySettings

OPTIMIZERS = ("adam", "adam_sage")
LABELS = {"adam": "Adam", "adam_sage": "Adam-SAGE"}
TEST_SETS = ("test2016", "test2017")


@dataclass(frozen=True)
class Run:
    """One training run: an optimizer at one learning rate (and beta0 for Adam-SAGE) and seed.

    ``lr`` and ``beta0`` are kept as written in the settings (``2e-3``), which name the run."""

    optimizer: str
    lr: str
    beta0: Optional[str]
    seed: int

    @property
    def name(self) -> str:
        beta0 = f"-b{self.beta0}" if self.beta0 is not None else ""
        return f"{self.optimizer}-lr{self.lr}{beta0}-seed{self.seed}"

    @property
    def setting(self) -> tuple:
        """(optimizer, lr, beta0): the run without its seed."""
        return (self.optimizer, self.lr, self.beta0)

    def folder(self, workdir: Path) -> Path:
        return workdir / "runs" / self.name

    def train_log(self, workdir: Path) -> Path:
        return self.folder(workdir) / "checkpoints" / self.optimizer / "train.log"

    def eval_dir(self, workdir: Path, model: str = BEST_MODEL) -> Path:
        """Where recipes/multi30k/evaluate.sh writes the scores of ``model`` (EVAL_MODEL)."""
        folder = self.folder(workdir) / "eval" / self.optimizer
        return folder if model == BEST_MODEL else folder / model

    def bleu_file(self, workdir: Path, subset: str, model: str = BEST_MODEL) -> Path:
        """The sacreBLEU JSON of ``subset`` (valid, test2016 or test2017)."""
        return self.eval_dir(workdir, model) / f"{subset}.sacrebleu.json"

    def with_seed(self, seed: int) -> "Run":
        return Run(self.optimizer, self.lr, self.beta0, seed)


def grid_runs(settings: StudySettings) -> List[Run]:
    """Adam at each lr, then Adam-SAGE at each (beta0, lr), all with the first seed."""
    seed = settings.seeds[0]
    adam = [Run("adam", lr, None, seed) for lr in settings.adam_lrs]
    sage = [Run("adam_sage", lr, b, seed) for b in settings.sage_beta0s for lr in settings.sage_lrs]
    return adam + sage


def seed_runs(best: Run, settings: StudySettings) -> List[Run]:
    """The runs of ``best``'s setting with every seed of the study, the first seed's first."""
    return [best.with_seed(seed) for seed in settings.seeds]
