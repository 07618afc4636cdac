"""The study's report, from its records alone: verdict per test set (paired difference over seeds
with its t-interval, the best pair's paired bootstrap), scores over seeds, and where the configuration
and records give them time to target, prunability and the sensitivity distribution; cost and step size,
design, grid and figures, written whole (markdown and PNGs) to the path the configuration names."""

import json
import math
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from matplotlib.figure import Figure

from fairseq_sage.files import replaced_atomically, write_atomic

from .config import StudyConfig
from .plan import Run, is_incumbent, number, seed_runs
from .stats import bootstrap_reading, paired_difference, significant, t_interval, verdict
from .steps import read_record
from .study import PAIRED_FILE, Outcome, best_loss, outcome, selection_score

MODEL_LABELS = {"checkpoint_best": "checkpoint_best.pt"}
PRUNED_FIRST = {"sensitivity": "least sensitive", "magnitude": "smallest-magnitude"}
LINE_STYLES = ["-", "--", ":", "-.", (0, (3, 1, 1, 1, 1, 1))]


def cell(value: Optional[float], spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def time_to_target(curve: List[dict], target: float) -> Optional[float]:
    """The updates of the first validation whose greedy BLEU reaches ``target``; None where none does."""
    return next((row["num_updates"] for row in curve if row.get("bleu", -math.inf) >= target), None)


def criterion(row: dict) -> str:
    return row.get("criterion", "sensitivity")  # rows written before the analysis named its criterion


def pruned_bleu(rows: List[dict], name: str, level: float) -> Optional[float]:
    """BLEU after pruning ``level`` % by criterion ``name``; None where the analysis did not reach it."""
    return next((row["bleu"] for row in rows if criterion(row) == name and row["prune_percent"] == level), None)


def prunable_level(rows: List[dict], name: str, tolerance: float) -> float:
    """The largest pruning level (by criterion ``name``) whose BLEU is within ``tolerance`` of level 0's."""
    rows = [row for row in rows if criterion(row) == name]
    unpruned = next(row["bleu"] for row in rows if row["prune_percent"] == 0)
    return max(row["prune_percent"] for row in rows if row["bleu"] >= unpruned - tolerance)


def mean_multiplier(records: Sequence[dict]) -> Optional[float]:
    """The mean of the train logs' ``sage_mult_mean`` over ``records``; None without SAGE."""
    values = [row["sage_mult_mean"] for r in records for row in r["train"] if "sage_mult_mean" in row]
    return statistics.fmean(values) if values else None


def prunability_verdict(name: str, label: str, baseline: str, tolerance: float, difference: dict) -> str:
    """'magnitude: Adam-SAGE's models are less prunable: Δ = -6.0 ± 4.1 points of the pruning level ..., significant'."""
    mean, half = difference["mean"], difference["half_width"]
    claim = f"{name}: {label}'s models are {'more' if mean > 0 else 'less'} prunable than {baseline}'s"
    if half is None:
        return f"{claim}: Δ = {mean:+.1f} points on one seed: no interval, no verdict"
    return (f"{claim}: Δ = {mean:+.1f} ± {half:.1f} points of the largest pruning level within {tolerance:g} BLEU of "
            f"the unpruned model (95 % CI of the paired difference over {difference['n']} seeds), "
            + ("significant" if significant(difference) else "not significant"))


def zero_verdict(layer: str, cause: str, label: str, baseline: str, difference: dict) -> str:
    """'ffn_fc1 weights of zero sensitivity (dead_relu_unit): Adam-SAGE − Adam = +3.00 ± 2.00 % of the
    layer type's weights (95 % CI ...), significant: more under Adam-SAGE'."""
    mean, half = difference["mean"] * 100, difference["half_width"]
    claim = f"{layer} weights of zero sensitivity ({cause}): {label} − {baseline} = {mean:+.2f}"
    if half is None:
        return f"{claim} % of the layer type's weights on one seed: no interval, no verdict"
    finding = (f"significant: {'more' if mean > 0 else 'fewer'} under {label}" if significant(difference)
               else "not significant")
    return (f"{claim} ± {half * 100:.2f} % of the layer type's weights (95 % CI of the paired difference over "
            f"{difference['n']} seeds), {finding}")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]) + "\n"


class Report:
    def __init__(self, config: StudyConfig, result: Outcome):
        self.config, self.study, self.result = config, config.study, result
        self.labels = {name: opt.label for name, opt in self.study.optimizers.items()}
        self.baseline, *self.others = list(self.study.optimizers)
        self.complete = bool(result.pair)
        paired = config.records / PAIRED_FILE
        self.p_values = json.loads(paired.read_text())["p_value"] if paired.is_file() else {}

    def model_label(self, model: str) -> str:
        return MODEL_LABELS.get(model, f"average of the last {self.study.train.average_last} epochs")

    def seeds(self, opt: str) -> List[Run]:
        return seed_runs(self.study, self.result.chosen[opt])

    def per_seed(self, opt: str, model: str, name: str, metric: str) -> Dict[int, float]:
        return {run.seed: self.result.records[run]["scores"][model][name][metric] for run in self.seeds(opt)}

    def difference(self, opt: str, model: str, name: str, metric: str = "bleu") -> dict:
        return paired_difference(self.per_seed(self.baseline, model, name, metric), self.per_seed(opt, model, name, metric))

    def final_records(self) -> List[dict]:
        return [self.result.records[run] for opt in self.study.optimizers for run in self.seeds(opt)]

    def values_over_seeds(self, value: Callable[[dict], Optional[float]]) -> Dict[str, Dict[int, float]]:
        """{optimizer: {seed: ``value`` of that seed's record}} over each best setting's seeds, leaving
        out the seeds whose value is None."""
        return {opt: {run.seed: v for run in self.seeds(opt) if (v := value(self.result.records[run])) is not None}
                for opt in self.study.optimizers}

    def over_seeds(self, values: Dict[str, Dict[int, float]], spec: str) -> List[str]:
        """Cells: each optimizer's mean ± half-width over its seeds, then each other optimizer's paired
        difference to the baseline (marked * where significant); – where no seed has a value."""
        def text(result):
            return f"{result['mean']:{spec}} ± {cell(result['half_width'], spec)}"
        cells = [text(t_interval(list(values[opt].values()))) if values[opt] else "–" for opt in self.study.optimizers]
        for opt in self.others:
            if not values[self.baseline].keys() & values[opt].keys():
                cells.append("–")
                continue
            difference = paired_difference(values[self.baseline], values[opt])
            cells.append(text(difference) + (" *" if significant(difference) else ""))
        return cells

    def over_seeds_header(self, *first: str) -> List[str]:
        return [*first, *self.labels.values(), *(f"{self.labels[o]} − {self.labels[self.baseline]}" for o in self.others)]

    # ---- sections

    def verdict_section(self) -> str:
        if not self.complete:
            return "### Verdict\n\n**Results pending**: written when every seed of every best setting is recorded.\n"
        model, lines = self.study.score.models[0], []
        for name in self.study.score.sets:
            for opt in self.others:
                difference = self.difference(opt, model, name)
                p_value = self.p_values.get(f"{model}/{name}/{opt}")
                p_text = "–" if p_value is None else f"{p_value:.4f}{bootstrap_reading(p_value, significant(difference))}"
                lines.append(f"- {verdict(name, self.labels[opt], self.labels[self.baseline], difference)}; "
                             f"paired bootstrap of the best seed pair: p = {p_text}.\n")
        return f"### Verdict\n\nScored model: {self.model_label(model)}.\n\n" + "".join(lines)

    def scores_section(self) -> str:
        if not self.complete:
            return ""
        rows = []
        for model in self.study.score.models:
            for name in self.study.score.sets:
                for metric in ("bleu", "chrf"):
                    cells = [t_interval(list(self.per_seed(opt, model, name, metric).values())) for opt in self.study.optimizers]
                    cells += [self.difference(opt, model, name, metric) for opt in self.others]
                    rows.append([self.model_label(model), name, metric,
                                 *(f"{c['mean']:.2f} ± {cell(c['half_width'])}" for c in cells)])
        header = ["model", "set", "metric", *self.labels.values(), *(f"{self.labels[o]} − {self.labels[self.baseline]}"
                                                                       for o in self.others)]
        return ("### Test scores over seeds\n\nMean ± half-width of the 95 % confidence interval (Student's t, n − 1) "
                "over the seeds; the difference is paired seed by seed.\n\n" + table(header, rows))

    def target_section(self) -> str:
        if not (self.complete and self.study.report.targets):
            return ""
        rows = []
        for target in self.study.report.targets:
            values = self.values_over_seeds(lambda record: time_to_target(record["curve"], target))
            missed = ", ".join(f"{self.labels[opt]} {len(self.seeds(opt)) - len(values[opt])}" for opt in values)
            rows.append([number(target), *self.over_seeds(values, ".0f"), missed])
        return ("### Time to target\n\nThe first update at which the greedy validation BLEU of the run's curve reaches "
                "each target: mean ± half-width of the 95 % t-interval over the seeds that reach it; the difference is "
                "paired over the seeds where both do (* significant: its interval excludes 0).\n\n"
                + table(self.over_seeds_header("target BLEU") + ["seeds that never reach it"], rows))

    def prunability_section(self) -> str:
        pruning = self.study.pruning
        if not (self.complete and pruning and all(r.get("pruning") and "criterion" in r["pruning"][0]
                                                  for r in self.final_records())):
            return ""  # records made before the analysis named the criterion of each row
        rows, verdicts = [], []
        for name in pruning.by:
            values = self.values_over_seeds(lambda record: prunable_level(record["pruning"], name, pruning.tolerance))
            rows.append([name, *self.over_seeds(values, ".1f")])
            for opt in self.others:
                difference = paired_difference(values[self.baseline], values[opt])
                line = prunability_verdict(name, self.labels[opt], self.labels[self.baseline], pruning.tolerance, difference)
                verdicts.append(f"- {line}.\n")
        curve = [[name, number(level), *self.over_seeds(self.values_over_seeds(
                     lambda record: pruned_bleu(record["pruning"], name, level)), ".2f")]
                 for name in pruning.by for level in pruning.levels]
        return (f"### Prunability\n\nPer model, the largest % of non-embedding weights pruned (one shot) whose BLEU on "
                f"{pruning.set} stays within {pruning.tolerance:g} BLEU of the unpruned model's; mean ± half-width over "
                "seeds, the difference paired (* significant).\n\n" + "".join(verdicts) + "\n"
                + table(self.over_seeds_header("pruned first by"), rows)
                + f"\nBLEU on {pruning.set} at each level, over seeds:\n\n"
                + table(self.over_seeds_header("pruned first by", "% pruned"), curve))

    def sensitivity_section(self) -> str:
        records = self.final_records() if self.complete else []
        if not records or not all(r.get("sensitivity_by_type") and "log10_var" in r["sensitivity_by_type"][0]
                                  for r in records):
            return ""
        layers = [row["type"] for row in records[0]["sensitivity_by_type"]]
        statistics_by = {(layer, column): self.values_over_seeds(lambda record: next(
            row[column] for row in record["sensitivity_by_type"] if row["type"] == layer))
            for layer in layers for column in ("log10_var", "log10_iqr", "zero_fraction")}
        rows = [[layer, column, *self.over_seeds(values, ".3f")] for (layer, column), values in statistics_by.items()]
        verdicts = [self.spread_verdict({layer: statistics_by[layer, column] for layer in layers}, name)
                    for column, name in (("log10_var", "variance"), ("log10_iqr", "interquartile range"))]
        text = table(self.over_seeds_header("layer type", "statistic"), rows)
        if all("zero_sensitivity" in r for r in records):
            causes = sorted({(row["type"], row["cause"]) for r in records for row in r["zero_sensitivity"]})
            zero_rows = []
            for layer, cause in causes:
                values = self.values_over_seeds(lambda record: sum(
                    row["fraction_of_type"] for row in record["zero_sensitivity"] if (row["type"], row["cause"]) == (layer, cause)))
                zero_rows.append([layer, cause, *self.over_seeds(values, ".4f")])
                if any(v for by_seed in values.values() for v in by_seed.values()):
                    verdicts += [zero_verdict(layer, cause, self.labels[opt], self.labels[self.baseline],
                                              paired_difference(values[self.baseline], values[opt]))
                                 for opt in self.others]
            text += ("\nWeights of zero sensitivity by cause, as a fraction of their layer type:\n\n"
                     + table(self.over_seeds_header("layer type", "cause"), zero_rows))
        return ("### Sensitivity distribution\n\nPer layer type, the variance and interquartile range of log10 "
                "sensitivity |θ·g| and the fraction of weights of zero sensitivity; mean ± half-width over seeds, the "
                "difference paired (* significant).\n\n" + "".join(f"- {line}.\n" for line in verdicts) + "\n" + text)

    def spread_verdict(self, by_layer: Dict[str, Dict[str, Dict[int, float]]], name: str) -> str:
        """'variance of log10 sensitivity, Adam-SAGE against Adam over 9 layer types: lower in 5 (significantly
        in ffn_fc1), higher in 4 (significantly in none)', from ``by_layer``: {layer type: that statistic's
        values over seeds}."""
        parts = []
        for opt in self.others:
            differences = {layer: paired_difference(values[self.baseline], values[opt]) for layer, values in by_layer.items()}
            counts = []
            for direction, chosen in (("lower", lambda d: d["mean"] < 0), ("higher", lambda d: d["mean"] > 0)):
                found = [layer for layer, d in differences.items() if chosen(d)]
                strong = [layer for layer in found if significant(differences[layer])]
                counts.append(f"{direction} in {len(found)}" + (f" (significantly in {', '.join(strong) or 'none'})"
                                                                 if found else ""))
            parts.append(f"{name} of log10 sensitivity, {self.labels[opt]} against {self.labels[self.baseline]} "
                         f"over {len(by_layer)} layer types: " + ", ".join(counts))
        return "; ".join(parts)

    def cost(self, opt: str) -> Dict[str, Optional[float]]:
        records = [self.result.records[run] for run in self.seeds(opt) if run in self.result.records]
        wps = [row["wps"] for r in records for row in r["epochs"] if "wps" in row]
        return {"runs": len(records), "wall": statistics.fmean(r["wall_seconds"] for r in records) if records else None,
                "wps": statistics.fmean(wps) if wps else None, "mult": mean_multiplier(records) or 1.0}

    def cost_section(self) -> str:
        if not self.result.chosen:
            return ""
        axes = list(dict.fromkeys(axis for run in self.result.chosen.values() for axis, _ in run.setting))
        rows = []
        for opt, run in self.result.chosen.items():
            c, setting = self.cost(opt), dict(run.setting)
            effective = cell(setting["lr"] * c["mult"], ".2e") if "lr" in setting else "–"
            rows.append([self.labels[opt], *(number(setting[a]) if a in setting else "–" for a in axes),
                         f"{c['runs']} of {len(self.study.selection.seeds)}", cell(c["mult"], ".3f"), effective,
                         cell(c["wall"], ".0f"), cell(c["wps"], ".0f")])
        return ("### Cost and step size\n\nAt each best setting, over its seeds recorded: the mean lr multiplier "
                "(`sage_mult_mean` of the train logs; 1 without one), the effective lr (lr × multiplier), training "
                "wall time per run and target words/s.\n\n"
                + table(["optimizer", *axes, "seeds", "mean multiplier", "effective lr", "wall (s)", "words/s"], rows))

    def grid_section(self) -> str:
        rows = []
        for run in self.result.grid:
            record = self.result.records.get(run)
            setting = ", ".join(f"{axis} {number(value)}" for axis, value in run.setting)
            setting += " (incumbent)" if is_incumbent(self.study, run) else ""
            if record is None:
                rows.append([self.labels[run.optimizer], setting, "pending", "", "", "", "", ""])
                continue
            rows.append([self.labels[run.optimizer], setting, cell(selection_score(self.config, record)),
                         cell(best_loss(record), ".3f"), cell(record["epochs"][-1]["loss"], ".3f"),
                         cell(mean_multiplier([record]), ".3f"), str(int(record["curve"][-1]["num_updates"])),
                         cell(record["wall_seconds"], ".0f")])
        return (f"### Grid (seed {self.study.selection.seeds[0]})\n\n" + table(
            ["optimizer", "setting", "selection BLEU", "best valid loss", "last-epoch train loss", "mean lr multiplier",
             "updates", "wall (s)"], rows)
            + f"\nSelection BLEU: {self.selection_text()}. Losses as fairseq logs them (bits per token). Mean lr "
              "multiplier: `sage_mult_mean` of the train logs averaged over the run (– without SAGE).\n"
            + "".join(map(self.grid_pivot, self.result.grids)))

    def grid_pivot(self, opt: str) -> str:
        """The selection BLEU of a grid of two axes (incumbents included) as a table: the second axis down,
        the first across; – where no run has that setting."""
        axes = list(self.result.grids[opt])
        if len(axes) != 2 or min(len(values) for values in self.result.grids[opt].values()) < 2:
            return ""
        across, down = axes
        runs = {(dict(run.setting)[down], dict(run.setting)[across]): run
                for run in self.result.grid if run.optimizer == opt}
        columns = sorted({a for _, a in runs})

        def score(run):
            record = self.result.records.get(run)
            return "–" if run is None else "pending" if record is None else cell(selection_score(self.config, record))
        rows = [[f"{down} {number(d)}", *(score(runs.get((d, a))) for a in columns)] for d in sorted({d for d, _ in runs})]
        return (f"\n{self.labels[opt]}'s selection BLEU, {down} × {across}:\n\n"
                + table(["", *(f"{across} {number(a)}" for a in columns)], rows))

    def reproduction_section(self) -> str:
        """The runs that the earlier study of selection.reproduce recorded under the same name: its scores
        and this study's, side by side (a deterministic retraining repeats them to the digit)."""
        if self.config.reproduce is None:
            return ""
        rows, same, compared = [], 0, 0
        for run, record in sorted(self.result.records.items(), key=lambda item: item[0].name):
            path = self.config.reproduce / f"{run.name}.json.gz"
            if not path.is_file():
                continue
            earlier = read_record(path)
            pairs = [("best greedy validation BLEU", *(max(row.get("bleu", -math.inf) for row in r["curve"])
                                                        for r in (earlier, record))),
                     ("last validation loss", earlier["curve"][-1]["loss"], record["curve"][-1]["loss"])]
            pairs += [(f"BLEU, {self.model_label(model)}, {name}", earlier["scores"][model][name]["bleu"], scores["bleu"])
                      for model, by_set in record["scores"].items() for name, scores in by_set.items()
                      if name in earlier["scores"].get(model, {})]
            for what, before, now in pairs:
                rows.append([run.name, what, f"{before:.2f}", f"{now:.2f}", f"{now - before:+.2f}"])
                same, compared = same + (round(before, 2) == round(now, 2)), compared + 1
        if not rows:
            return ""
        return (f"### Reproduction\n\nRuns that the records in `{self.study.selection.reproduce}` hold under the same "
                f"name, trained again here: {same} of {compared} figures repeated to the second decimal.\n\n"
                + table(["run", "figure", "recorded earlier", "this study", "difference"], rows))

    def selection_text(self) -> str:
        selection = self.study.selection
        if selection.set is None:
            return "the best greedy validation BLEU of the run's curve (fairseq-train --eval-bleu)"
        return f"BLEU of {selection.model}.pt on {selection.set} (beam {self.study.score.beam})"

    def design_section(self) -> str:
        study = self.study
        grids = "; ".join(f"{self.labels[opt]} " + " × ".join(f"{axis} ∈ {{{', '.join(map(number, values))}}}"
                                                               for axis, values in grid.items())
                          + "".join(f" and incumbent {', '.join(f'{a} {number(v)}' for a, v in setting.items())}"
                                    for setting in study.optimizers[opt].incumbents)
                          for opt, grid in self.result.grids.items())
        budget = (f"{self.result.max_update} updates per run" if study.train.max_update else
                  f"{self.result.max_update} updates per run, from the budget run's curve (first N where the "
                  f"smoothed validation BLEU gains less than {study.train.budget_rule.min_gain} over the last "
                  f"{study.train.budget_rule.tail:.0%} of N)") if self.result.max_update else "pending"
        widening = (f"an axis whose best value is at an edge gets one value beyond it (at most "
                    f"{study.selection.max_widen} times)" if study.selection.max_widen else "not widened")
        pruned_first = " or (separately) ".join(PRUNED_FIRST[name] for name in study.pruning.by) if study.pruning else ""
        pruning = (f"- **Pruning**: {self.model_label(study.pruning.model)} of every seed, sensitivity |θ·g| over "
                   f"{study.pruning.batches} training batches, BLEU on {study.pruning.set} after zeroing the "
                   f"{', '.join(map(number, study.pruning.levels))} % {pruned_first} non-embedding weights.\n"
                   if study.pruning else "")
        return ("### Design\n\n" + (study.report.design + "\n" if study.report.design else "")
                + f"- **Budget**: {budget}.\n- **Grid** (seed {study.selection.seeds[0]}): {grids}; {widening}. "
                  f"Selection by the {self.selection_text()}.\n"
                + f"- **Models scored**: {', '.join(map(self.model_label, study.score.models))}; beam "
                  f"{study.score.beam}, sacreBLEU and chrF on {', '.join(study.score.sets)}.\n" + pruning
                + f"- **Seeds**: {', '.join(map(str, study.selection.seeds))} per best setting; 95 % t-intervals over "
                  "seeds, the paired difference seed by seed (significant when its interval excludes 0), and "
                  "sacreBLEU's paired bootstrap (1,000 resamples) between each optimizer's seed of highest "
                  "selection score.\n")

    # ---- figures

    def figures(self, folder: Path) -> List[tuple]:
        """Draw the figures into ``folder``; (file name, caption) of each."""
        drawn = []
        if self.result.budget:
            figure = Figure(figsize=(6, 4), layout="constrained")
            axes = figure.subplots()
            curve = [row for row in self.result.budget["curve"] if "bleu" in row]
            axes.plot([r["num_updates"] for r in curve], [r["bleu"] for r in curve], marker="o", label="validation BLEU")
            axes.plot(*zip(*self.result.budget["smoothed"]), label="smoothed")
            axes.axvline(self.result.max_update, linestyle="--", color="gray")
            axes.set_xlabel("updates")
            axes.legend()
            drawn.append(self.save(figure, folder, "budget.png", "Budget run: validation BLEU (greedy) at each "
                                   "validation; the dashed line is the budget of every run."))
        if self.result.chosen:
            figure = Figure(figsize=(11, 4.2), layout="constrained")
            bleu_axes, loss_axes = figure.subplots(1, 2)
            for i, opt in enumerate(self.result.chosen):
                for j, run in enumerate(r for r in self.seeds(opt) if r in self.result.records):
                    curve = self.result.records[run]["curve"]
                    bleu = [row for row in curve if "bleu" in row]  # with fairseq-train --eval-bleu
                    style = dict(color=f"C{i}", linestyle=LINE_STYLES[j % len(LINE_STYLES)], marker="o", markersize=3,
                                 label=f"{self.labels[opt]} seed {run.seed}")
                    bleu_axes.plot([r["num_updates"] for r in bleu], [r["bleu"] for r in bleu], **style)
                    loss_axes.plot([r["num_updates"] for r in curve], [r["loss"] for r in curve], **style)
            for axes, label in ((bleu_axes, "validation BLEU (greedy)"), (loss_axes, "validation loss")):
                axes.set_xlabel("updates")
                axes.set_ylabel(label)
                axes.grid(True, alpha=0.3)
            loss_axes.legend(fontsize=7)
            drawn.append(self.save(figure, folder, "validation_curves.png", "Validation BLEU (greedy) and loss at each "
                                   "validation, every seed of each best setting."))
            multiplier = {opt: self.result.records.get(run) for opt, run in self.result.chosen.items()}
            multiplier = {opt: r for opt, r in multiplier.items() if r and any("sage_mult_mean" in x for x in r["train"])}
            if multiplier:
                figure = Figure(figsize=(6, 4), layout="constrained")
                axes = figure.subplots()
                for opt, record in multiplier.items():
                    rows = [x for x in record["train"] if "sage_mult_mean" in x]
                    for key, style in (("sage_mult_mean", "-"), ("sage_mult_p10", ":"), ("sage_mult_p90", ":")):
                        axes.plot([x["num_updates"] for x in rows], [x.get(key) for x in rows], style,
                                  label=f"{self.labels[opt]} {key.removeprefix('sage_mult_')}")
                axes.set_xlabel("updates")
                axes.set_ylabel("lr multiplier")
                axes.legend(fontsize=7)
                drawn.append(self.save(figure, folder, "sage_multiplier.png", "The lr multiplier over training (mean, "
                                       "10th and 90th percentile), best setting, first seed."))
        if self.complete and self.study.pruning and all(r.get("pruning") for r in self.final_records()):
            figure = Figure(figsize=(6, 4), layout="constrained")
            axes = figure.subplots()
            levels = self.study.pruning.levels
            for i, opt in enumerate(self.study.optimizers):
                for j, name in enumerate(self.study.pruning.by):
                    values = [self.values_over_seeds(lambda record: pruned_bleu(record["pruning"], name, level))[opt]
                              for level in levels]
                    spread = [t_interval(list(v.values())) for v in values]
                    mean = [s["mean"] for s in spread]
                    half = [s["half_width"] or 0.0 for s in spread]
                    axes.plot(levels, mean, marker="o", markersize=3, color=f"C{i}", linestyle=LINE_STYLES[j],
                              label=self.labels[opt] + (f", {name}" if len(self.study.pruning.by) > 1 else ""))
                    axes.fill_between(levels, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                                      color=f"C{i}", alpha=0.15)
            pruned_first = " or ".join(PRUNED_FIRST[name] for name in self.study.pruning.by)
            axes.set_xlabel("% of non-embedding weights pruned")  # by what: the legend and the caption
            axes.set_ylabel(f"BLEU on {self.study.pruning.set}")
            axes.legend()
            drawn.append(self.save(figure, folder, "pruning.png", f"BLEU after zeroing the {pruned_first} non-embedding "
                                   "weights: the mean over each best setting's seeds, shaded over its 95 % t-interval."))
        return drawn

    @staticmethod
    def save(figure: Figure, folder: Path, name: str, caption: str) -> tuple:
        folder.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(folder / name) as partial:
            figure.savefig(partial, format="png", dpi=110, metadata={"Software": None})
        return name, caption

    def markdown(self, figures: List[tuple], figure_folder: str, config_shown: str) -> str:
        total = len(self.result.grid) + len(self.result.finals) - len(set(self.result.grid) & set(self.result.finals))
        status = ("**Complete:** every run of the design below is recorded." if self.complete else
                  f"**Partial results:** {len(self.result.records)} of at least {total or len(self.result.grid)} runs "
                  "recorded; the verdict is written when every seed of every best setting is.")
        figure_text = "".join(f"![{name}]({figure_folder}/{name})\n\n{caption}\n\n" for name, caption in figures)
        sections = [self.verdict_section(), self.scores_section(), self.target_section(), self.prunability_section(),
                    self.sensitivity_section(), self.cost_section(), self.design_section(),
                    self.grid_section(), self.reproduction_section(), "### Figures\n\n" + (figure_text or "None yet.\n")]
        return (f"# {self.study.report.title}\n\n<!-- written by fairseq-sage-study report {config_shown}: "
                "do not edit by hand -->\n\n" + (self.study.report.intro + "\n\n" if self.study.report.intro else "")
                + status + "\n\n" + "\n".join(s for s in sections if s)
                + f"\n### How to run\n\n```bash\nfairseq-sage-study run {config_shown}     # runs or resumes it\n"
                  f"fairseq-sage-study report {config_shown}  # this page, from the records\n```\n")


def write_report(config: StudyConfig, config_shown: str) -> Path:
    """The report of the study's records at the configured path, with its figures beside it."""
    report = Report(config, outcome(config))
    folder = config.report.parent / config.study.report.figures
    figures = report.figures(folder)
    config.report.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(config.report, report.markdown(figures, config.study.report.figures, config_shown))
    return config.report
