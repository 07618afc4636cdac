"""The converged study's figures, statistics and report (``bash studies/multi30k/run_study.sh --converged``).

    python -m studies.multi30k.converged_report WORKDIR [--doc PATH]

Writes WORKDIR/figures/*.png, WORKDIR/results/summary.json and WORKDIR/results.md; with ``--doc``
also the converged section of PATH (e.g. docs/results.md; the short-budget report beside it is kept)
with the figures copied to figures/multi30k/converged/ beside it. Steps that have not run are
pending; no number is written for them.
"""

import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure

from .plots import COLORS, FIGURES_DIR, SEED_STYLES, SUBSET_NAMES, plot_grid, plot_multiplier, plot_pruning
from .plots import save, setting_label
from .plan import best_seeds
from .progress import budget_runs, estimate
from .report import Study, cell, short_budget_verdicts, shown_path, splice_converged, table
from .results import read_bleu, read_pruning
from .runs import LABELS, OPTIMIZERS, TEST_SETS, Run, seed_runs
from .settings import BEST_MODEL, BUDGET_FILE, read_json, run_cli, write_atomically
from .stats import bootstrap_reading, paired_difference, significant, t_interval, verdict

AVERAGED = "checkpoint_avg"
MODELS = (AVERAGED, BEST_MODEL)
METRICS = {"bleu": "sacrebleu.json", "chrf": "chrf.json"}
DOC_FIGURES = "figures/multi30k/converged"
FIGURES = [  # (file, caption)
    ("budget.png", "Budget phase: validation BLEU (greedy) of Adam at each epoch's end; the dashed line "
     "is the budget every run of the study then trains for."),
    ("validation_curves.png", "Validation BLEU (greedy, at each epoch's end) and validation loss of "
     "every seed of both best settings."),
    ("sage_multiplier.png", "Adam-SAGE's lr multiplier over training, best setting, first seed."),
    ("beta0_lr_heatmap.png", "Validation BLEU of the averaged model over Adam-SAGE's β0 × lr grid, "
     "and against lr for each optimizer."),
    ("pruning.png", "BLEU after zeroing the least sensitive non-embedding weights of each optimizer's "
     "best-seed averaged model."),
]  # fmt: skip


def score(run: Run, workdir: Path, model: str, test: str, metric: str) -> Optional[float]:
    return read_bleu(run.eval_dir(workdir, model) / f"{test}.{METRICS[metric]}")


def paired_p_value(workdir: Path, test: str) -> Optional[float]:
    """The p-value of sacreBLEU's paired bootstrap of Adam-SAGE against Adam on ``test``."""
    path = workdir / "paired" / f"{test}.json"
    return read_json(path)[1]["BLEU"]["p_value"] if path.is_file() else None


def plot_validation_curves(path: Path, curves: Dict[Run, object]) -> None:
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    bleu_axes, loss_axes = figure.subplots(1, 2)
    for run, result in curves.items():
        style = dict(color=COLORS[run.optimizer], linestyle=SEED_STYLES[(run.seed - 1) % len(SEED_STYLES)],
                     marker="o", markersize=3, label=f"{setting_label(run)} seed {run.seed}")
        valid = [r for r in result.log.valid if "bleu" in r]
        bleu_axes.plot([r["num_updates"] for r in valid], [r["bleu"] for r in valid], **style)
        loss_axes.plot([r["num_updates"] for r in valid], [r["loss"] for r in valid], **style)
    for axes, label in ((bleu_axes, "validation BLEU (greedy)"), (loss_axes, "validation loss (bits/token)")):
        axes.set_xlabel("updates")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
    loss_axes.legend(fontsize=7)
    save(figure, path)


class ConvergedStudy(Study):
    """The converged study: Study's grid and selection on the averaged model, with CIs over seeds."""

    def __init__(self, workdir: Path, short_budget: Optional[Dict[str, str]] = None):
        super().__init__(workdir)
        self.short_budget = short_budget or {}  # {test set: the short-budget study's verdict line}
        self.budget = read_json(workdir / BUDGET_FILE) if (workdir / BUDGET_FILE).is_file() else None
        self.stats = self.statistics() if self.best else {}
        self.pruning = self.pair_pruning() if self.complete() else {}

    def pair_pruning(self) -> Dict[str, List[Dict[str, float]]]:
        """The pruning curve of each optimizer's best seed (its run's analysis/pruning_bleu.csv)."""
        curves = {run.optimizer: read_pruning(run.folder(self.workdir) / "analysis" / "pruning_bleu.csv")
                  for run in self.pair()}
        return {optimizer: rows for optimizer, rows in curves.items() if rows is not None}

    def one_setting_each(self) -> bool:
        """Whether the grid holds one setting per optimizer (e.g. given from an earlier tuning): it has no
        β0 × lr grid to show."""
        return len(self.grid) == len(OPTIMIZERS)

    def no_grid_note(self) -> str:
        tuned_by = self.settings.values.get("TUNED_BY")
        return ("the grid holds one setting per optimizer"
                + (" (**Tuned by** in the design says where they come from)" if tuned_by else "") + ".\n")

    def beta0_lr_section(self) -> str:
        if self.one_setting_each():
            return "No β0 × lr grid: " + self.no_grid_note()
        return super().beta0_lr_section()

    def drawn_figures(self) -> List[Tuple[str, str]]:
        """The (file, caption) of FIGURES this study has drawn (no heatmap, even a stale one, for one
        setting each)."""
        skipped = {"beta0_lr_heatmap.png"} if self.one_setting_each() else set()
        return [(name, caption) for name, caption in FIGURES
                if name not in skipped and (self.workdir / FIGURES_DIR / name).is_file()]

    def final_runs(self, optimizer: str) -> List[Run]:
        return seed_runs(self.best[optimizer], self.settings)

    def statistics(self) -> Dict[str, object]:
        """Per model, test set and metric: per-seed scores, mean ± CI per optimizer, paired difference."""
        stats: Dict[str, object] = {}
        for model in MODELS:
            for test in TEST_SETS:
                for metric in METRICS:
                    scores = {opt: {run.seed: score(run, self.workdir, model, test, metric)
                                    for run in self.final_runs(opt)} for opt in OPTIMIZERS}
                    complete = all(v is not None for s in scores.values() for v in s.values())
                    entry = {"per_seed": scores, "complete": complete}
                    if complete:
                        entry.update({opt: t_interval(list(scores[opt].values())) for opt in OPTIMIZERS})
                        entry["difference"] = paired_difference(scores["adam"], scores["adam_sage"])
                    stats[f"{model}/{test}/{metric}"] = entry
        return stats

    def complete(self) -> bool:
        return bool(self.stats) and all(entry["complete"] for entry in self.stats.values())

    def cost(self, optimizer: str) -> Dict[str, Optional[float]]:
        """Mean wall seconds, words/s and lr multiplier over the seeds of the best setting."""
        results = [self.results[run] for run in self.final_runs(optimizer) if self.results[run].finished]
        wps = [r["wps"] for res in results for r in res.log.epochs if "wps" in r]
        mult = [r["sage_mult_mean"] for res in results for r in res.log.train if "sage_mult_mean" in r]
        wall = [res.wall_seconds for res in results if res.wall_seconds is not None]
        return {"runs": len(results),
                "wall_seconds": statistics.fmean(wall) if wall else None,
                "wps": statistics.fmean(wps) if wps else None,
                "mult_mean": statistics.fmean(mult) if mult else (1.0 if optimizer == "adam" and results else None)}

    # ---- sections

    def status(self) -> str:
        if self.complete() and self.pruning:
            return "**Complete:** every run, score and curve of the design below is in."
        scored = sum(self.results[run].valid_bleu is not None for run in self.grid)
        if scored:
            return (f"**Partial results.** The converged study is running: {scored} of {len(self.grid)} grid "
                    "runs are finished and scored (the rows with a valid BLEU); the verdict is written here when "
                    "every seed of both best settings is scored.")
        return ("**Results pending.** The converged study has not finished; the verdict will be written "
                "here when it has run. No number below is a result until then.")

    def verdict_section(self) -> str:
        if not self.complete():
            text = ("### Verdict\n\n**Results pending: the study has not finished.** The verdict per test "
                    "set (Adam-SAGE ± 95 % CI of the paired difference, significant / not significant) "
                    "appears here once every seed is scored.\n")
        else:
            text = "### Verdict\n\n"
            for test in TEST_SETS:
                difference = self.stats[f"{AVERAGED}/{test}/bleu"]["difference"]
                p_value = paired_p_value(self.workdir, test)
                p_text = ("pending" if p_value is None else
                          f"{p_value:.4f}{bootstrap_reading(p_value, significant(difference))}")
                text += f"- {verdict(test, difference)}; paired bootstrap of the best seed pair: p = {p_text}.\n"
        if self.short_budget:
            text += ("\nBeside it, the short budget (the study below, 600 updates of 2k tokens; "
                     "[its findings](#findings)):\n\n")
            text += "".join(f"- {test}: {line}\n" for test, line in self.short_budget.items())
        return text

    def scores_section(self) -> str:
        if not self.complete():
            scored = ""
            if self.stats:  # the seeds whose averaged model has its BLEU on every test set, so far
                bleu = [self.stats[f"{AVERAGED}/{test}/bleu"]["per_seed"] for test in TEST_SETS]
                counts = {opt: sum(all(scores[opt][run.seed] is not None for scores in bleu)
                                   for run in self.final_runs(opt)) for opt in OPTIMIZERS}
                scored = " (scored so far: " + ", ".join(
                    f"{LABELS[opt]} {n} of {len(self.final_runs(opt))} seeds" for opt, n in counts.items()) + ")"
            return f"### Test scores over seeds\n\nResults pending until every seed is scored{scored}.\n"
        rows = []
        labels = {AVERAGED: f"average of the last {self.value('AVERAGE_LAST')} epochs", BEST_MODEL: "checkpoint_best.pt"}
        for model, label in labels.items():
            for test in TEST_SETS:
                for metric in METRICS:
                    entry = self.stats[f"{model}/{test}/{metric}"]
                    cells = [f"{e['mean']:.2f} ± {cell(e['half_width'])}" for e in
                             (entry["adam"], entry["adam_sage"], entry["difference"])]
                    rows.append([label, test, metric, *cells])
        return ("### Test scores over seeds\n\nMean ± half-width of the 95 % confidence interval (Student's t, "
                "n − 1) over the seeds; the difference is Adam-SAGE − Adam seed by seed.\n\n"
                + table(["model", "set", "metric", "Adam", "Adam-SAGE", "paired difference"], rows))

    def cost_section(self) -> str:
        if not self.best:
            return "### Cost and step size\n\nResults pending: not run yet.\n"
        rows = []
        for opt in OPTIMIZERS:
            c = self.cost(opt)
            run = self.best[opt]
            effective = None if c["mult_mean"] is None else float(run.lr) * c["mult_mean"]
            rows.append([LABELS[opt], run.lr, run.beta0 or "–", f"{c['runs']} of {len(self.final_runs(opt))}",
                         cell(c["mult_mean"], ".3f"), cell(effective, ".2e"), cell(c["wall_seconds"], ".0f"),
                         cell(c["wps"], ".0f")])
        return ("### Cost and step size\n\nAt each best setting, over its seeds trained so far: the mean lr "
                "multiplier (`sage_mult_mean` of the train logs; 1 for Adam), the effective lr (lr × multiplier), "
                "training wall time per run and target words/s.\n\n"
                + table(["optimizer", "lr", "β0", "seeds", "mean multiplier", "effective lr", "wall (s)", "words/s"],
                        rows))

    def design(self) -> str:
        v = self.value
        if not budget_runs(self.settings):
            budget = (f"- **Budget**: **{v('BUDGET')} updates** for every run, given (`BUDGET={v('BUDGET')}`) "
                      "instead of this study's budget phase.\n")
        else:
            chosen = (f"**{self.budget['budget']} updates**, chosen by the rule: {self.budget['rule']}"
                      if self.budget else "pending (the budget run has not finished)")
            budget = (f"- **Budget**: Adam at lr {v('BUDGET_LR')} trained for {v('BUDGET_MAX_UPDATE')} updates, "
                      f"validation BLEU (fairseq `--eval-bleu`, greedy) at each epoch's end; budget: {chosen}. "
                      "Every later run trains for it.\n")
        return (
            "### Design\n\n"
            f"- **Model and data**: as the short-budget study below (2+2 layers, dimension 128), "
            f"{v('MAX_TOKENS')} tokens per batch, {v('WARMUP_UPDATES')} warm-up updates.\n"
            + budget +
            f"- **Models scored**: the average of the last {v('AVERAGE_LAST')} epoch checkpoints "
            "(`fairseq_sage.tools.average_checkpoints`) and `checkpoint_best.pt` (the epoch of highest "
            "validation BLEU); beam 5, sacreBLEU and chrF on test2016 and test2017.\n"
            f"- **Pruning** (`python -m fairseq_sage.analysis`, docs/analysis.md): every seed's averaged model, "
            f"sensitivity |θ·g| over {v('PRUNE_BATCHES')} training batches, then BLEU on "
            f"{SUBSET_NAMES[v('PRUNE_SUBSET')]} after zeroing the {v('PRUNE_LEVELS').replace(',', ', ')} % least "
            "sensitive non-embedding weights; the figure shows each optimizer's best seed.\n"
            + (f"- **Tuned by**: {v('TUNED_BY')}\n" if self.settings.values.get("TUNED_BY") else "") +
            f"- **Grid** (seed {self.settings.seeds[0]}): Adam lr ∈ {{{', '.join(self.settings.adam_lrs)}}}; "
            f"Adam-SAGE lr ∈ {{{', '.join(self.settings.sage_lrs)}}} × β0 ∈ {{{', '.join(self.settings.sage_beta0s)}}}; "
            f"a grid whose best lr is at an edge gets one lr beyond it (at most {v('MAX_WIDEN')} times). "
            "Selection by the validation BLEU (beam 5) of the averaged model.\n"
            f"- **Seeds**: {len(self.settings.seeds)} per best setting; 95 % t-intervals over seeds, the paired "
            "difference per seed with its interval (significant when it excludes 0), and sacreBLEU's "
            "paired bootstrap (`--paired-bs`, 1,000 resamples) between each optimizer's seed of highest "
            "validation BLEU.\n"
            f"- **Schedule**: JOBS={v('JOBS')} runs at once, each with nproc / JOBS threads (the budget run "
            "alone with every core); the runs left over after a stage's last full round (with JOBS=2, the last "
            "run of a stage of an odd number of runs) wait for the others, then share every core, so their "
            "wall time is shorter. The "
            "seeds alternate Adam and Adam-SAGE, so that the two runs trained at once are one of each and "
            "the optimizers' wall times and words/s are measured under the same load.\n"
            f"- **Size**: {estimate(self.settings)}\n"
        )

    def figures_section(self, folder: str) -> str:
        present = self.drawn_figures()
        no_heatmap = "No β0 × lr heatmap: " + self.no_grid_note() + "\n" if self.one_setting_each() else ""
        if not present:
            return "### Figures\n\nResults pending: not run yet.\n\n" + no_heatmap
        return "### Figures\n\n" + "".join(f"![{n}]({folder}/{n})\n\n{c}\n\n" for n, c in present) + no_heatmap

    def markdown(self, figure_folder: str) -> str:
        work = shown_path(self.workdir)
        return (
            "## At convergence\n\n"
            "Both optimizers tuned on equal terms and trained until the tuned Adam's validation BLEU stops "
            f"improving, {len(self.settings.seeds)} seeds each (`bash studies/multi30k/run_study.sh --converged`). The short-budget "
            "study (600 updates of 2k tokens) follows below it.\n\n"
            + self.status() + "\n\n" + self.verdict_section() + "\n" + self.scores_section() + "\n"
            + self.cost_section() + "\n" + self.design() + "\n"
            + self.grid_section().replace("## Grid", "### Grid") + "\n"
            + self.figures_section(figure_folder) + "\n"
            "### How to run\n\n"
            f"```bash\n{self.given_settings()}bash studies/multi30k/run_study.sh --converged {work}\n```\n\n"
            "It prints the estimate above and goes to the background; "
            f"`{work}/progress.md` says the runs done and remaining, each run's updates and the ETA, with "
            "the runs a grid's widening will likely add while its best lr so far is at an edge (refreshed "
            f"every 5 minutes, `PROGRESS_INTERVAL=300` seconds, and at each run's end), `{work}/study.log` "
            "holds the output. The same command resumes it after an interruption (finished steps are "
            "skipped, an interrupted run resumes from its last epoch checkpoint) and runs on a GPU "
            "machine as well. With `RECORDS=DIR`, each finished run also leaves its record in DIR (step "
            "markers, train log, scores, translations, pruning curve; no checkpoint), from which a study in "
            "a new work folder restores it instead of training it again.\n"
        )

    def given_settings(self) -> str:
        """The settings this study was given instead of their defaults, as the command's prefix."""
        given = [key for key in self.settings.overridden if key != "TUNED_BY"]
        return "".join(f"{key}={shlex.quote(self.value(key))} " for key in given)

    def draw_figures(self) -> List[Path]:
        folder = self.workdir / FIGURES_DIR
        written = []
        if not self.one_setting_each() and any(self.results[run].valid_bleu is not None for run in self.grid):
            written.append(folder / "beta0_lr_heatmap.png")
            plot_grid(written[-1], self.settings, self.results)
        if self.best:
            curves = {run: self.results[run] for opt in OPTIMIZERS for run in self.final_runs(opt)
                      if self.results[run].log.valid}
            if curves:
                written.append(folder / "validation_curves.png")
                plot_validation_curves(written[-1], curves)
            sage = self.best["adam_sage"]
            if any("sage_mult_mean" in r for r in self.results[sage].log.train):
                written.append(folder / "sage_multiplier.png")
                plot_multiplier(written[-1], sage, self.results[sage])
        if self.pruning and len(self.pruning) == len(OPTIMIZERS):
            pair = {run.optimizer: run for run in self.pair()}
            written.append(folder / "pruning.png")
            plot_pruning(written[-1], self.pruning, pair, SUBSET_NAMES[self.value("PRUNE_SUBSET")])
        return written

    def pair(self) -> List[Run]:
        return best_seeds(self.workdir, self.settings)


def write_report(args) -> None:
    old = args.doc.read_text() if args.doc and args.doc.is_file() else ""
    study = ConvergedStudy(args.workdir, short_budget_verdicts(old))
    study.draw_figures()
    summary = {"budget": study.budget, "statistics": study.stats,
               "paired_bootstrap_p": {test: paired_p_value(args.workdir, test) for test in TEST_SETS},
               "cost": {opt: study.cost(opt) for opt in OPTIMIZERS} if study.best else {}}
    write_atomically(args.workdir / "results" / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    write_atomically(args.workdir / "results.md", study.markdown(FIGURES_DIR).encode())
    if args.doc:
        for name, _ in study.drawn_figures():
            write_atomically(args.doc.parent / DOC_FIGURES / name, (args.workdir / FIGURES_DIR / name).read_bytes())
        write_atomically(args.doc, splice_converged(old, study.markdown(DOC_FIGURES)).encode())
    print(f"[multi30k-converged] report: {args.workdir / 'results.md'}" + (f" and {args.doc}" if args.doc else ""))


def main(argv: Sequence[str] = None) -> int:
    return run_cli(__doc__.split("\n\n")[0], write_report, argv, lambda parser: parser.add_argument(
        "--doc", type=Path, help="also write the converged section here (e.g. docs/results.md)"))


if __name__ == "__main__":
    sys.exit(main())
