"""The study's tables and its markdown report, from the results that exist (nothing else).

    python -m studies.multi30k.report WORKDIR [--doc PATH]

Writes WORKDIR/results/runs.csv and runs.json (one row per run), WORKDIR/results/summary.json (the
selection, test BLEU per seed with mean ± std, the comparison, the pruning curves) and
WORKDIR/results.md; with ``--doc`` also PATH (e.g. docs/results.md), with the figures copied to
figures/multi30k/ beside it. Steps that have not run are listed as pending; no number is written
for them.
"""

import argparse
import csv
import io
import json
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .plots import FIGURES_DIR, SUBSET_NAMES
from .results import (
    RunResult, best_runs, collect, compare, pruning_curves, read_signature, seed_summary, selection_rule,
)  # fmt: skip
from .runs import LABELS, OPTIMIZERS, TEST_SETS, Run, grid_runs
from .settings import StudyError, StudySettings, read_settings, write_atomically

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_FIGURES = "figures/multi30k"
# the converged study's section of the shared results document (converged_report.py)
CONVERGED_BEGIN = "<!-- converged study: written by studies/multi30k/converged_report.py -->\n"
CONVERGED_END = "<!-- end of the converged study -->\n"

# Sizing of the default configuration on a 2-core CPU (see the Design section of the report).
# measured with the quickstart (recipes/multi30k/README.md) on an idle 2-core machine
SECONDS_PER_UPDATE = 0.29  # 700 updates of 2,048 tokens, 3 validations included, in 201-203 s
SECONDS_PER_DECODE = 10  # beam 5 over one set of about 1,000 sentences, start-up included
SECONDS_PER_RUN = 5  # start-up and the last checkpoint of one training run

FIGURES = [  # (file, caption)
    ("learning_curves.png", "Train loss (every log line) and validation loss (every validation) of "
     "each seed of both best settings."),
    ("sage_multiplier.png", "Adam-SAGE's per-weight learning-rate multiplier over training (mean, "
     "median, 10th-90th percentile band), the fraction of weights whose step SAGE enlarges (m > 1), "
     "and the mean sensitivity Ī and local variation U (cf. Fig. 4 and 6 of Liang et al.)."),
    ("beta0_lr_heatmap.png", "Validation BLEU over Adam-SAGE's β0 × lr grid (cf. Fig. 7/8 of Liang et "
     "al.), and validation BLEU against lr for Adam and for each β0."),
    ("pruning.png", "BLEU after setting the least sensitive non-embedding weights to zero (one global "
     "ranking by |θ·g|), both best seed-1 models (cf. Fig. 3 of Liang et al.)."),
] + [
    (f"sensitivity_{optimizer}.png", f"Sensitivity |θ·g| per layer type of the best {LABELS[optimizer]} "
     "seed-1 model (cf. Fig. 2 of Liang et al.).")
    for optimizer in OPTIMIZERS
]  # fmt: skip


def cell(value: Optional[float], spec: str = ".2f") -> str:
    return "pending" if value is None else format(value, spec)


def mean_std(stats: Dict[str, object]) -> str:
    """'31.20 ± 0.40' (sample std over seeds); 'pending' until every seed is scored."""
    if not stats["complete"]:
        return "pending"
    std = "n/a" if stats["std"] is None else f"{stats['std']:.2f}"
    return f"{stats['mean']:.2f} ± {std}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


class Study:
    """A study's settings and results, and the report's sections."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.settings: StudySettings = read_settings(workdir)
        self.results: Dict[Run, RunResult] = collect(workdir, self.settings)
        self.grid = grid_runs(self.settings)
        try:
            self.best: Optional[Dict[str, Run]] = best_runs(self.results, self.settings)
        except StudyError:
            self.best = None
        self.summaries = (
            {opt: seed_summary(self.results, run, self.settings) for opt, run in self.best.items()}
            if self.best else {}
        )  # fmt: skip
        self.pruning = pruning_curves(workdir) if self.best else {}
        self.signature = read_signature(workdir, list(self.results))

    def value(self, key: str) -> str:
        return self.settings.values[key]

    # ---- status and pending steps

    def pending(self) -> List[str]:
        """The steps whose results do not exist yet, in the order the study runs them."""
        missing = [f"grid run {run.name}: validation BLEU"
                   for run in self.grid if self.results[run].valid_bleu is None]
        if not self.best:
            return missing + ["the seeds of each best setting and their test BLEU (after the grid)",
                              "the pruning curves (after the grid)"]
        for summary in self.summaries.values():
            for test in TEST_SETS:
                for seed, score in summary[test]["per_seed"].items():
                    if score is None:
                        missing.append(f"{LABELS[summary['optimizer']]} seed {seed}: {test} BLEU")
        missing += [f"{LABELS[opt]} pruning curve" for opt in OPTIMIZERS if opt not in self.pruning]
        return missing

    def status(self) -> str:
        trained = sum(1 for r in self.results.values() if r.log.train or r.log.valid)
        if trained == 0:
            return "**Results pending: not run yet.** No run of this study has trained; the sections " \
                   "below give the design and the commands, and every number is marked pending."
        pending = self.pending()
        if pending:
            return f"**Partial results:** {len(pending)} step(s) still pending (listed at the end); " \
                   "the numbers shown are final for the runs that finished."
        return "**Complete:** every run, score and curve of the design below is in."

    # ---- sections

    def findings(self) -> str:
        if not self.summaries or not all(s[t]["complete"] for s in self.summaries.values() for t in TEST_SETS):
            return "## Findings\n\nResults pending: not run yet (the grid, the seeds and the test " \
                   "scores must finish first).\n"
        rows = []
        for opt in OPTIMIZERS:
            s = self.summaries[opt]
            rows.append([LABELS[opt], s["lr"], s["beta0"] or "–", cell(s["valid_bleu"]),
                         mean_std(s["test2016"]), mean_std(s["test2017"]), str(len(s["seeds"]))])
        text = "## Findings\n\n" + table(
            ["optimizer", "best lr", "β0", "valid BLEU (seed 1)", "test2016 BLEU", "test2017 BLEU", "seeds"], rows)
        text += "\nTest BLEU: mean ± sample standard deviation (n − 1) over the seeds.\n\n"
        for test in TEST_SETS:
            text += "- " + self.verdict(test) + "\n"
        ratio = float(self.best["adam_sage"].lr) / float(self.best["adam"].lr)
        text += (f"- Adam-SAGE's best lr is {ratio:g}× Adam's (the paper finds SAGE wants a 2–5× larger "
                 f"lr); its best β0 is {self.best['adam_sage'].beta0} (the paper: 0.6–0.9).\n")
        text += ("- Scale: the small model and short schedule of the design below, on a CPU. The paper's "
                 "IWSLT'14 and WMT'16 settings (recipes/iwslt14_de_en, recipes/wmt16_en_de) need a GPU "
                 "and are not part of this study.\n")
        return text

    def verdict(self, test: str) -> str:
        adam, sage = self.summaries["adam"][test], self.summaries["adam_sage"][test]
        comparison = compare(adam, sage)
        difference, error = comparison["difference"], comparison["standard_error"]
        numbers = (f"{test}: Adam-SAGE {sage['mean']:.2f} vs Adam {adam['mean']:.2f}, "
                   f"a difference of {difference:+.2f} BLEU")
        if error is None:
            return numbers + "; with one seed there is no spread to judge it against."
        if abs(difference) <= 2 * error:
            return (numbers + f", within two standard errors of the difference (2 × {error:.2f}): "
                    "no clear difference at this scale.")
        winner = "Adam-SAGE beats Adam" if difference > 0 else "Adam-SAGE does not beat Adam: Adam is better"
        return numbers + f", more than two standard errors (2 × {error:.2f}): {winner}."

    def sizing(self) -> str:
        grid = len(self.grid)
        seeds = len(self.settings.seeds)
        runs = grid + len(OPTIMIZERS) * (seeds - 1)
        levels = len(self.value("PRUNE_LEVELS").split(","))
        decodes = grid + len(OPTIMIZERS) * seeds * len(TEST_SETS) + len(OPTIMIZERS) * levels
        updates = runs * self.settings.integer("MAX_UPDATE")
        seconds = updates * SECONDS_PER_UPDATE + decodes * SECONDS_PER_DECODE + runs * SECONDS_PER_RUN
        text = (
            f"- **Size.** {grid} grid runs + {len(OPTIMIZERS)} × {seeds - 1} more seeds = {runs} training "
            f"runs of {self.value('MAX_UPDATE')} updates ({updates:,} updates), and {decodes} beam searches over "
            f"a set of about 1,000 sentences ({grid} validation, {len(OPTIMIZERS) * seeds * len(TEST_SETS)} "
            f"test, {len(OPTIMIZERS) * levels} pruning). Estimated on a 2-core CPU: {updates:,} × "
            f"{SECONDS_PER_UPDATE} s + {decodes} × {SECONDS_PER_DECODE} s + {runs} × {SECONDS_PER_RUN} s "
            f"(start-up) ≈ **{seconds / 3600:.1f} h**. The rates are the Multi30k quickstart's, timed on an "
            "idle 2-core machine (recipes/multi30k/README.md): 3.5 updates/s with validations, about 10 s "
            "per beam search. On a machine shared with other jobs the two torch threads of each process "
            "compete for the cores and a run can take several times longer; `OMP_NUM_THREADS=1` can "
            "then be faster.\n"
        )
        if self.settings.overridden:
            text += ("  This study overrides " + ", ".join(self.settings.overridden) +
                     ", so the estimate holds only for the counts, not for the per-update rate.\n")
        measured = sorted(r.wall_seconds for r in self.results.values() if r.finished and r.wall_seconds)
        if measured:
            text += (f"- **Measured.** {len(measured)} finished runs took {sum(measured) / 3600:.2f} h of "
                     "fairseq-train wall time (from its configuration line to its last line, validations "
                     "included, less what an interrupted process did after its last checkpoint; median "
                     f"{statistics.median(measured):.0f} s, range {measured[0]:.0f}–"
                     f"{measured[-1]:.0f} s per run).\n")
        return text

    def data_sizes(self) -> Dict[str, int]:
        """Pairs per split of the prepared text (WORKDIR/data/text/SPLIT.en), once prepared."""
        text = self.workdir / "data" / "text"
        return {split: len((text / f"{split}.en").read_text().splitlines())
                for split in ("train", "valid", "test2016", "test2017") if (text / f"{split}.en").is_file()}

    def design(self) -> str:
        v = self.value
        sizes = self.data_sizes()
        if len(sizes) == 4:
            data = (f"{sizes['train']:,} training pairs, {sizes['valid']:,} `val` pairs for validation and "
                    f"selection, test2016 ({sizes['test2016']:,}) and test2017 ({sizes['test2017']:,})")
        else:  # not prepared yet: what the settings ask for
            train = "all 29,000" if v("MAX_TRAIN_LINES") == "all" else f"the first {v('MAX_TRAIN_LINES')}"
            test = "1,000 each" if v("MAX_TEST_LINES") == "all" else f"the first {v('MAX_TEST_LINES')} of each"
            data = (f"{train} training pairs, the 1,014 `val` pairs for validation and selection, test2016 "
                    f"and test2017 ({test})")
        source = f"`{shown_path(Path(v('DATA')))}`" if v("DATA") else "`../shared/data/multi30k`"
        flags = f" Extra fairseq-train flags of this study: `{v('TRAIN_FLAGS')}`." if v("TRAIN_FLAGS") else ""
        seeds = self.settings.seeds
        return (
            "## Design\n\n"
            f"- **Data.** Multi30k task 1, German→English ({source}, checksums verified): {data} for "
            f"the reported scores; one joint sentencepiece BPE model of {v('SPM_VOCAB_SIZE')} pieces "
            "(`recipes/multi30k/prepare.sh`).\n"
            "- **Model and training** (`recipes/multi30k/train.sh`): transformer with 2+2 layers, dimension "
            "128, 4 heads, FFN 512, shared embeddings, dropout 0.2; label-smoothed cross-entropy (0.1); "
            "betas (0.9, 0.98), weight decay 1e-4; inverse-sqrt schedule with "
            f"{v('WARMUP_UPDATES')} warm-up updates from 1e-7 to the peak lr; {v('MAX_TOKENS')} tokens per "
            f"batch; **{v('MAX_UPDATE')} updates** for every run. Validation and a checkpoint every "
            f"{v('SAVE_INTERVAL_UPDATES')} updates and at each epoch's end; `checkpoint_best.pt` (lowest "
            f"validation loss) is the model that is scored. Train loss and SAGE statistics every "
            f"{v('LOG_INTERVAL')} updates. `--update-epoch-batch-itr True`, so an interrupted run resumes "
            f"exactly.{flags}\n"
            f"- **Grid** (seed {seeds[0]}): Adam lr ∈ {{{', '.join(self.settings.adam_lrs)}}}; Adam-SAGE lr ∈ "
            f"{{{', '.join(self.settings.sage_lrs)}}} × β0 ∈ {{{', '.join(self.settings.sage_beta0s)}}} "
            "(SAGE wants a 2–5× larger lr than Adam, β0 in 0.6–0.9, per Liang et al., ICLR 2022).\n"
            f"- **Selection.** Per optimizer, the {selection_rule(self.settings.selection_model)}.\n"
            f"- **Seeds.** Each best setting is trained with seeds {{{', '.join(map(str, seeds))}}} "
            f"(the grid run is seed {seeds[0]}).\n"
            "- **Test scores** (`recipes/multi30k/evaluate.sh`): beam 5, at most 1.2 × source length + 10 "
            "tokens, sentencepiece decoded, sacreBLEU on raw text"
            + (f" (`{self.signature}`)" if self.signature else "") + "; mean ± sample standard deviation "
            "(n − 1) over the seeds. A difference of means counts as real only beyond two standard errors "
            "sqrt(s²_Adam/n + s²_SAGE/n).\n"
            f"- **Pruning** (`python -m fairseq_sage.analysis`, docs/analysis.md): for each best seed-1 model, "
            f"the sensitivity |θ·g| averaged over {v('PRUNE_BATCHES')} training batches (dropout off), then "
            f"BLEU on {SUBSET_NAMES[v('PRUNE_SUBSET')]} after zeroing the {v('PRUNE_LEVELS').replace(',', ', ')} % "
            "least sensitive non-embedding weights. Its BLEU takes fairseq's decoded references, so the 0 % "
            "point can differ slightly from the test-score table.\n"
            + self.sizing()
        )

    def grid_section(self) -> str:
        rows = []
        for run in self.grid:
            r = self.results[run]
            if not r.finished:  # a run in progress or interrupted: its numbers so far are not results
                progress = "pending" if r.updates is None else f"{r.updates} so far"
                rows.append([LABELS[run.optimizer], run.lr, run.beta0 or "–", *["pending"] * 3, progress, "pending"])
                continue
            rows.append([LABELS[run.optimizer], run.lr, run.beta0 or "–", cell(r.valid_bleu),
                         cell(r.best_valid_loss, ".3f"), cell(r.final_train_loss, ".3f"),
                         "pending" if r.updates is None else str(r.updates), cell(r.wall_seconds, ".0f")])
        text = f"## Grid (seed {self.settings.seeds[0]})\n\n" + table(
            ["optimizer", "lr", "β0", "valid BLEU", "best valid loss", "last-epoch train loss", "updates",
             "wall (s)"], rows)
        text += ("\nLosses: label-smoothed cross-entropy in bits per target token. Valid BLEU: "
                 f"`{self.settings.selection_model}.pt` on `val`, beam 5.\n\n")
        return text + self.beta0_lr_section()

    def beta0_lr_section(self) -> str:
        """Adam-SAGE's validation BLEU over its β0 × lr grid, as a table, and what β0 bounds."""
        lrs = sorted(self.settings.sage_lrs, key=float)
        by_setting = {run.setting: self.results[run].valid_bleu for run in self.grid}
        matrix = [[f"β0 = {b}"] + [cell(by_setting[("adam_sage", lr, b)]) for lr in lrs]
                  for b in sorted(self.settings.sage_beta0s, key=float)]
        text = "Adam-SAGE validation BLEU, β0 × lr:\n\n" + table(["", *[f"lr {lr}" for lr in lrs]], matrix)
        text += ("\nβ0 bounds how far one jump in an element's sensitivity can raise its step: with I far "
                 "above Ī, U/Ī_c approaches β0/(1 − β0) (1.5 at β0 = 0.6, 4 at 0.8, 9 at 0.9, "
                 "after bias correction has faded), so a high β0 and a high lr together let spikes through; "
                 "a lower β0 tolerates a higher lr.\n")
        return text

    def seeds_section(self) -> str:
        if not self.best:
            return "## Seeds at the best settings\n\nResults pending: the grid has not finished.\n"
        rows = []
        for opt in OPTIMIZERS:
            summary = self.summaries[opt]
            for seed in summary["seeds"]:
                run = self.best[opt].with_seed(seed)
                r = self.results[run]
                rows.append([LABELS[opt], run.lr, run.beta0 or "–", str(seed),
                             *(cell(r.test_bleu[test]) for test in TEST_SETS),
                             cell(r.best_valid_loss, ".3f"), cell(r.wall_seconds, ".0f")])
            rows.append([f"**{LABELS[opt]} mean ± std**", "", "", "", mean_std(summary["test2016"]),
                         mean_std(summary["test2017"]), "", ""])
        return "## Seeds at the best settings\n\n" + table(
            ["optimizer", "lr", "β0", "seed", "test2016 BLEU", "test2017 BLEU", "best valid loss", "wall (s)"], rows)

    def pruning_section(self) -> str:
        if not self.pruning:
            return "## Pruning\n\nResults pending: not run yet.\n"
        levels = sorted({row["prune_percent"] for rows in self.pruning.values() for row in rows})
        bleu = {(opt, row["prune_percent"]): row["bleu"] for opt, rows in self.pruning.items() for row in rows}
        rows = [[f"{level:g}"] + [cell(bleu.get((opt, level))) for opt in OPTIMIZERS] for level in levels]
        subset = SUBSET_NAMES[self.value("PRUNE_SUBSET")]
        return (f"## Pruning\n\nBLEU on {subset} with the given percentage of the least sensitive "
                "non-embedding weights set to zero (best seed-1 model of each optimizer).\n\n"
                + table(["pruned %", *[f"{LABELS[opt]} BLEU" for opt in OPTIMIZERS]], rows)
                + self.pruning_reading(levels, bleu))

    def pruning_reading(self, levels: List[float], bleu: Dict[tuple, float]) -> str:
        """The BLEU each model loses at the highest pruning level, beside the paper's claim."""
        first, last = levels[0], levels[-1]
        if len(self.pruning) < len(OPTIMIZERS) or last == first:
            return ""
        drops = {opt: bleu[(opt, first)] - bleu[(opt, last)] for opt in OPTIMIZERS}
        larger = max(OPTIMIZERS, key=drops.get)
        return (f"\nFrom {first:g} % to {last:g} % pruned, Adam loses {drops['adam']:.2f} BLEU and "
                f"Adam-SAGE {drops['adam_sage']:.2f}. The paper's reading (SAGE puts its least sensitive "
                "weights to use, so removing them hurts more) predicts the larger loss for Adam-SAGE; "
                f"here {LABELS[larger]} loses more. One model each, so this is an observation, not a "
                "measured difference.\n")

    def figures(self) -> List[Path]:
        """The report's figures that plots.py has drawn, in the report's order."""
        paths = [self.workdir / FIGURES_DIR / name for name, _ in FIGURES]
        return [path for path in paths if path.is_file()]

    def figures_section(self, folder: str) -> str:
        """The figures, linked as ``folder/NAME`` (relative to the markdown file)."""
        present = {path.name for path in self.figures()}
        if not present:
            return "## Figures\n\nResults pending: not run yet.\n\n"
        text = "## Figures\n\n"
        for name, caption in FIGURES:
            if name in present:
                text += f"![{name}]({folder}/{name})\n\n{caption}\n\n"
        return text

    def commands(self) -> str:
        v = self.value
        env = "".join(f"{key}={shlex.quote(v(key))} " for key in self.settings.overridden)
        work = shown_path(self.workdir)
        data = f" --data {shlex.quote(shown_path(Path(v('DATA'))))}" if v("DATA") else ""
        flags = f" {v('TRAIN_FLAGS')}" if v("TRAIN_FLAGS") else ""
        run = f"{work}/runs/RUN OPTIMIZER"
        steps = [
            f"LR=... [SAGE_BETA0=...] SEED=... MAX_UPDATE={v('MAX_UPDATE')} WARMUP_UPDATES={v('WARMUP_UPDATES')} "
            f"MAX_TOKENS={v('MAX_TOKENS')} \\\n"
            f"    bash recipes/multi30k/train.sh {run} --update-epoch-batch-itr True \\\n    --save-interval-updates {v('SAVE_INTERVAL_UPDATES')} --keep-interval-updates 1 "
            f"--log-interval {v('LOG_INTERVAL')}{flags}",
            f"bash recipes/multi30k/evaluate.sh {run} valid   # the grid runs",
            f"bash recipes/multi30k/evaluate.sh {run}    # every seed of the best settings",
            f"python -m fairseq_sage.analysis {work}/data/data-bin \\\n"
            f"    --path {work}/runs/RUN/checkpoints/OPTIMIZER/checkpoint_best.pt --cpu \\\n"
            f"    --prune-levels {v('PRUNE_LEVELS')} --gen-subset {v('PRUNE_SUBSET')} "
            f"--num-batches {v('PRUNE_BATCHES')} --post-process sentencepiece \\\n"
            f"    --output-dir {work}/analysis/OPTIMIZER",
            f"python -m studies.multi30k.plots {work}",
            f"python -m studies.multi30k.report {work} --doc docs/results.md",
        ]
        return (
            "## How to regenerate\n\n"
            "From the repository root, with the project's environment active (`. .venv/bin/activate`):\n\n"
            f"```bash\n{env}bash studies/multi30k/run_study.sh{data} {work}{' --' + flags if flags else ''}\n```\n\n"
            "It is resumable: after an interruption run the same command again; finished steps are skipped "
            "(markers in each run's `.steps/` and in the study's `.steps/`) and an interrupted training "
            f"run resumes from its last checkpoint. Each run lives in its own folder `{work}/runs/RUN/` "
            "(delete it to redo that run from scratch). What the script runs, per step (RUN like "
            "`adam_sage-lr5e-3-b0.8-seed1`, OPTIMIZER `adam` or `adam_sage`):\n\n"
            "```bash\n" + "\n".join(steps) + "\n```\n\n"
            f"Per-run numbers: `{work}/results/runs.csv` and `runs.json`; selection, per-seed scores and "
            f"mean ± std: `{work}/results/summary.json`. The exact fairseq-train command of a run is in "
            "its `checkpoints/OPTIMIZER/train.done`, its log in `train.log`.\n"
        )

    def markdown(self, figure_folder: str) -> str:
        pending = self.pending()
        text = (
            "# Multi30k De→En: Adam vs Adam-SAGE\n\n"
            "Generated by `studies/multi30k/report.py` from the study's run folders; every score, loss and "
            "time below comes from a finished run (see [How to regenerate](#how-to-regenerate)).\n\n"
            + self.status() + "\n\n" + self.findings() + "\n" + self.design() + "\n" + self.grid_section()
            + "\n" + self.seeds_section() + "\n" + self.pruning_section() + "\n"
            + self.figures_section(figure_folder) + self.commands()
        )
        if pending:
            text += "\n## Pending\n\n" + "".join(f"- {step}\n" for step in pending)
        return text

    # ---- machine-readable tables

    def summary(self) -> Dict[str, object]:
        summary: Dict[str, object] = {"selection_rule": selection_rule(self.settings.selection_model), "sacrebleu_signature": self.signature,
                                      "best": self.summaries, "pruning": self.pruning, "comparison": {}}
        if len(self.summaries) == len(OPTIMIZERS):
            for test in TEST_SETS:
                adam, sage = self.summaries["adam"][test], self.summaries["adam_sage"][test]
                if adam["complete"] and sage["complete"]:
                    summary["comparison"][test] = compare(adam, sage)
        return summary

    def write_tables(self) -> None:
        folder = self.workdir / "results"
        rows = [result.row() for result in self.results.values()]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(folder / "runs.csv", text.getvalue().encode())
        write_atomically(folder / "runs.json", (json.dumps(rows, indent=2) + "\n").encode())
        write_atomically(folder / "summary.json", (json.dumps(self.summary(), indent=2) + "\n").encode())


def short_budget_verdicts(text: str) -> Dict[str, str]:
    """{test set: its verdict line} of the short-budget report's findings in ``text`` (a
    docs/results.md), outside the converged section; {} when it has none yet."""
    if CONVERGED_BEGIN in text and CONVERGED_END in text:
        before, rest = text.split(CONVERGED_BEGIN, 1)
        text = before + rest.split(CONVERGED_END, 1)[1]
    findings = text.partition("\n## Findings\n")[2].split("\n## ", 1)[0]
    return dict(re.findall(rf"^- ({'|'.join(TEST_SETS)}): (Adam-SAGE .*)$", findings, re.M))


def splice_converged(text: str, section: str) -> str:
    """``text`` with its converged section replaced by ``section``, or inserted after the title."""
    block = CONVERGED_BEGIN + section.rstrip("\n") + "\n" + CONVERGED_END
    if CONVERGED_BEGIN in text and CONVERGED_END in text:
        before, rest = text.split(CONVERGED_BEGIN, 1)
        return before + block + rest.split(CONVERGED_END, 1)[1]
    title, separator, body = text.partition("\n\n")
    return title + separator + block + "\n" + body if text.startswith("# ") else block + "\n" + text


def publish(study: Study, doc: Path) -> None:
    """Write the report to ``doc`` with its figures copied to figures/multi30k/ beside it, keeping the
    converged study's section that ``doc`` holds."""
    for figure in study.figures():
        write_atomically(doc.parent / DOC_FIGURES / figure.name, figure.read_bytes())
    text = study.markdown(DOC_FIGURES)
    old = doc.read_text() if doc.is_file() else ""
    if CONVERGED_BEGIN in old and CONVERGED_END in old:
        text = splice_converged(text, old.split(CONVERGED_BEGIN, 1)[1].split(CONVERGED_END, 1)[0])
    write_atomically(doc, text.encode())


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--doc", type=Path, help="also write the report here (e.g. docs/results.md)")
    args = parser.parse_args(argv)
    try:
        study = Study(args.workdir)
        study.write_tables()
        write_atomically(args.workdir / "results.md", study.markdown(FIGURES_DIR).encode())
        if args.doc:
            publish(study, args.doc)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"[multi30k-study] report: {args.workdir / 'results.md'}" + (f" and {args.doc}" if args.doc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
