"""A study's configuration file (TOML): its schema, validated by pydantic, with one-line errors.

Paths are relative to the configuration file's folder; ``{workdir}`` in the data section and in the
preparation command stands for the study's work folder.
"""

import tomllib
from pathlib import Path
from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, model_validator

Number = Union[StrictInt, StrictFloat]


class ConfigError(Exception):
    """A configuration that cannot be used; its message is one line naming the key or path."""


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalSet(Schema):
    subset: str  # the data-bin's subset (valid, test, test1, ...)
    reference: str  # raw reference text, one sentence per line, for sacreBLEU


class Data(Schema):
    data_bin: str
    prepare: Optional[List[str]] = None  # a command that creates data_bin (run when it is missing)
    source_lang: str
    target_lang: str
    post_process: Optional[str] = None  # fairseq-generate --post-process (e.g. sentencepiece)
    sets: Dict[str, EvalSet]


class BudgetRule(Schema):
    """One long run of ``optimizer`` at ``setting``; the budget is the first validation N where the
    smoothed validation BLEU gains less than ``min_gain`` over the last ``tail`` of N."""

    optimizer: str
    setting: Dict[str, Number]
    max_update: StrictInt
    tail: float = 0.2
    min_gain: float = 0.3
    smooth: StrictInt = 3  # validations in the trailing mean


class Train(Schema):
    flags: List[str]  # fairseq-train flags of every run (model, criterion, batch, schedule, --eval-bleu ...)
    max_update: Optional[StrictInt] = None  # the budget, or:
    budget_rule: Optional[BudgetRule] = None
    average_last: StrictInt = 0  # epoch checkpoints kept and averaged into checkpoint_avg.pt

    @model_validator(mode="after")
    def one_budget(self):
        if (self.max_update is None) == (self.budget_rule is None):
            raise ValueError("give either max_update or budget_rule")
        return self


class Optimizer(Schema):
    label: str
    flags: List[str]  # e.g. ["--optimizer", "adam_sage", "--adam-betas", "(0.9, 0.98)"]
    grid: Dict[str, List[Number]]  # axis (a fairseq-train flag without "--", "_" for "-") -> values
    limits: Dict[str, List[Number]] = {}  # axis -> [low, high]: widening stays strictly inside
    incumbents: List[Dict[str, Number]] = []  # settings beside the grid (an earlier study's best, each axis given):
    # trained at the first seed, they compete in the selection; widening looks at the grid's own best only

    @model_validator(mode="after")
    def incumbents_name_every_axis(self):
        for i, setting in enumerate(self.incumbents):
            if set(setting) != set(self.grid):
                raise ValueError(f"incumbents[{i}]: give exactly the grid's axes ({', '.join(self.grid)}), "
                                 f"got {', '.join(setting) or 'none'}")
        return self


class Selection(Schema):
    set: Optional[str] = None  # BLEU of ``model`` on this set, beam search; none: the best greedy validation
    # BLEU of the run's curve (fairseq-train --eval-bleu), which costs no beam search
    model: Literal["checkpoint_best", "checkpoint_avg"] = "checkpoint_best"
    seeds: List[StrictInt]
    max_widen: StrictInt = 2  # values each axis may gain by widening
    reproduce: Optional[str] = None  # an earlier study's records folder: the runs recorded there under the
    # same name are trained again here, and the report compares their scores (a deterministic run repeats them)


class Score(Schema):
    models: List[Literal["checkpoint_best", "checkpoint_avg"]]
    sets: List[str]
    beam: StrictInt = 5
    generate_flags: List[str] = []
    paired_bootstrap: bool = True


class Pruning(Schema):
    levels: List[Number]
    set: str
    model: Literal["checkpoint_best", "checkpoint_avg"] = "checkpoint_best"
    batches: StrictInt = 8
    by: List[Literal["sensitivity", "magnitude"]] = Field(["sensitivity"], min_length=1)  # the weights pruned first:
    # least sensitive |θ·g| or smallest |θ|, each criterion pruned separately
    tolerance: float = 1.0  # BLEU points: a model's prunability is its largest level within this of its unpruned BLEU


class Report(Schema):
    path: str = "{workdir}/report.md"
    figures: str = "figures"  # beside the report
    title: str
    intro: str = ""
    design: str = ""  # markdown kept in the report's design section
    targets: List[Number] = []  # greedy validation BLEU values: the report's time to target of each


class Study(Schema):
    name: str
    workdir: str
    records: str
    jobs: StrictInt = 1
    data: Data
    train: Train
    optimizers: Dict[str, Optimizer]
    selection: Selection
    score: Score
    pruning: Optional[Pruning] = None
    report: Report

    @model_validator(mode="after")
    def known_names(self):
        sets = [("selection.set", self.selection.set)] if self.selection.set else []
        sets += [("score.sets", s) for s in self.score.sets]
        sets += [("pruning.set", self.pruning.set)] if self.pruning else []
        for key, name in sets:
            if name not in self.data.sets:
                raise ValueError(f"{key}: '{name}' is not one of data.sets ({', '.join(self.data.sets)})")
        if self.pruning and 0 not in self.pruning.levels:
            raise ValueError("pruning.levels: include 0 (the unpruned BLEU that prunability is measured from)")
        models = set(self.score.models) | ({self.selection.model} if self.selection.set else set()) | ({self.pruning.model} if self.pruning else set())
        if "checkpoint_avg" in models and self.train.average_last < 1:
            raise ValueError("train.average_last: give the epoch checkpoints to average (checkpoint_avg is used)")
        if self.train.budget_rule and self.train.budget_rule.optimizer not in self.optimizers:
            raise ValueError(f"train.budget_rule.optimizer: '{self.train.budget_rule.optimizer}' is not an optimizer")
        if (self.selection.set is None or self.train.budget_rule) and "--eval-bleu" not in self.train.flags:
            raise ValueError("train.flags: add --eval-bleu (the validation BLEU curve selects or sets the budget)")
        if len(set(self.selection.seeds)) != len(self.selection.seeds) or not self.selection.seeds:
            raise ValueError("selection.seeds: give one or more distinct seeds")
        return self


def _message(error: ValidationError) -> str:
    first = error.errors()[0]
    location = first["loc"]
    text = first["msg"].removeprefix("Value error, ")
    if location and location[-1] in ("int", "float"):  # a grid value: StrictInt | StrictFloat
        location, text = location[:-1], "should be a number"
    key = ".".join(str(part) for part in location)
    if first["type"] == "extra_forbidden":
        text = "unknown key"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        text += f" (got {first['input']!r})"
    return f"{key}: {text}" if key else text


class StudyConfig:
    """A validated study (``.study``) and the paths it names, resolved."""

    def __init__(self, path: Path):
        self.path = Path(path).resolve()
        try:
            raw = tomllib.loads(self.path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        try:
            self.study = Study.model_validate(raw)
        except ValidationError as error:
            raise ConfigError(f"{path}: {_message(error)}") from None
        self.folder = self.path.parent
        self.workdir = self.resolve(self.study.workdir)
        self.records = self.resolve(self.study.records)
        self.report = self.resolve(self.study.report.path)
        self.reproduce = self.resolve(self.study.selection.reproduce) if self.study.selection.reproduce else None
        if self.reproduce and not self.reproduce.is_dir():
            raise ConfigError(f"{path}: selection.reproduce: {self.reproduce}: no such folder (give an earlier "
                              "study's records)")

    def resolve(self, text: str) -> Path:
        """``text`` as a path, ``{workdir}`` substituted, relative to the configuration's folder."""
        if "{workdir}" in text:
            return Path(text.replace("{workdir}", str(self.workdir))).resolve()
        return (self.folder / text).resolve()

    @property
    def data_bin(self) -> Path:
        return self.resolve(self.study.data.data_bin)

    def reference(self, name: str) -> Path:
        return self.resolve(self.study.data.sets[name].reference)
