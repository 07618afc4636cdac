"""``python -m fairseq_sage.tools.analysis DATA_BIN --path CHECKPOINT``: sensitivity and pruning analysis.

For a trained fairseq translation model it writes, into ``--output-dir``:

- ``sensitivity_by_type.csv`` / ``.png``: the distribution of the weights' sensitivity |θ·g|
  (averaged over ``--num-batches`` training batches) per layer type (Fig. 2 of Liang et al., 2022);
- ``zero_sensitivity.csv``: the weights of zero sensitivity per layer type and cause (dead ReLU
  units, unused embedding rows, other);
- ``pruning_bleu.csv`` / ``.png``: BLEU on ``--gen-subset`` after setting the p % non-embedding
  weights of lowest sensitivity (or magnitude, ``--prune-by``) to zero, for each p of
  ``--prune-levels`` (their Fig. 3).

See docs/analysis.md.
"""

import argparse
import itertools
import pickle
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from fairseq import checkpoint_utils, utils
from fairseq.data.data_utils import infer_language_pair
from fairseq.tasks import TASK_REGISTRY
from fairseq.tasks.translation import TranslationTask

from ... import fairseq as _plugin  # noqa: F401  (our optimizers and fairseq's hardened checkpoint loader)

from .bleu import corpus_bleu, translate_subset
from .pruning import PRUNING_CRITERIA, SensitivityRanking, largest_selected, prune_, pruning_scores
from .report import plot_pruning_curve, plot_sensitivity_by_type, write_csv
from .sensitivity import average_sensitivity, sensitivity_by_type, summarize
from .zero_sensitivity import record_activity, zero_sensitivity_causes
from ..writable import why_not_writable

__all__ = [
    "AnalysisError", "cli_main", "get_parser", "load_model", "parse_prune_by", "parse_prune_levels",
    "pruning_curve", "run_analysis", "training_batches",
]

PROG = "fairseq-sage-analyze"


class AnalysisError(ValueError):
    """Bad input to the analysis; the message is one line naming the file or flag and the fix."""


def parse_prune_levels(text: str) -> List[float]:
    """'0,5,10' as [0.0, 5.0, 10.0]: percentages in [0, 100), without repeats."""
    try:
        levels = [float(item) for item in text.split(",")]
    except ValueError:
        raise AnalysisError(
            f"--prune-levels {text!r}: expected comma-separated percentages like 0,10,20") from None
    if any(not 0 <= level < 100 for level in levels) or len(set(levels)) != len(levels):
        raise AnalysisError(
            f"--prune-levels {text!r}: each percentage must be in [0, 100) and appear once")
    return levels


def parse_prune_by(text: str) -> List[str]:
    """'sensitivity,magnitude' as ['sensitivity', 'magnitude']: criteria of
    :data:`.pruning.PRUNING_CRITERIA`, without repeats."""
    criteria = [item.strip() for item in text.split(",")]
    if any(c not in PRUNING_CRITERIA for c in criteria) or len(set(criteria)) != len(criteria):
        raise AnalysisError(f"--prune-by {text!r}: expected a comma-separated list of distinct criteria "
                            f"among {','.join(PRUNING_CRITERIA)}")
    return criteria


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Sensitivity |θ·g| of a fairseq translation model's weights per layer type, "
        "and BLEU after one-shot pruning of the least sensitive weights.",
    )
    add = parser.add_argument
    add("data", metavar="DATA_BIN", help="fairseq-preprocess output the model was trained on")
    add("--path", required=True, metavar="CHECKPOINT", help="fairseq checkpoint (.pt)")
    add("--user-dir", help="fairseq plugin folder the model needs (fairseq_sage is always loaded)")
    add("--num-batches", type=int, default=8,
        help="training batches the sensitivity is averaged over (default: 8)")
    add("--max-tokens", type=int, default=4096,
        help="tokens per batch, for the sensitivity and for translation (default: 4096)")
    add("--prune-levels", default="0,5,10,15,20,25,30,35,40",
        help="percentages of non-embedding weights to prune (default: 0,5,...,40)")
    add("--prune-by", default="sensitivity",
        help="what the weights are ranked by for pruning, a comma-separated list of "
        f"{', '.join(PRUNING_CRITERIA)} (default: sensitivity)")
    add("--gen-subset", default="valid", help="subset translated for BLEU (default: valid)")
    add("--beam", type=int, default=5, help="beam size (default: 5)")
    add("--post-process", "--remove-bpe", nargs="?", const="subword_nmt", default=None,
        help="as fairseq-generate's: undo subword segmentation before BLEU "
        "('subword_nmt', 'sentencepiece', '@@ ', ...)")
    add("--output-dir", help="where to write the results (default: analysis/ beside the checkpoint)")
    add("--seed", type=int, default=1, help="seed of the choice of training batches (default: 1)")
    add("--cpu", action="store_true", help="run on the CPU even if a GPU is available")
    return parser


def load_model(data: Path, checkpoint: Path, user_dir: Optional[str]):
    """(model, task, criterion) from ``checkpoint``, with the task reading ``data``.

    fairseq's loader is the plugin's (:mod:`fairseq_sage.fairseq.checkpoint_hardening`): a damaged
    checkpoint, or one holding foreign objects or code in its configuration, stops the program
    with one ``fairseq-sage: error:`` line before fairseq builds anything from it. A checkpoint of
    another task than translation, or a DATA_BIN without the dictionaries of a translation
    corpus, is an AnalysisError before the model is built."""
    if not data.is_dir():
        raise AnalysisError(f"DATA_BIN {data}: no such directory; give the fairseq-preprocess output folder")
    if not checkpoint.is_file():
        raise AnalysisError(f"--path {checkpoint}: no such checkpoint file")
    if user_dir is not None:
        if not Path(user_dir).is_dir():
            raise AnalysisError(f"--user-dir {user_dir}: no such directory")
        utils.import_user_module(argparse.Namespace(user_dir=user_dir))
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), arg_overrides={"data": str(data)})
        check_translation(state["cfg"].task, data, checkpoint)
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides={"data": str(data)}, state=state
        )
    except FileNotFoundError as err:
        raise AnalysisError(f"DATA_BIN {data}: {err}; is it the data-bin the model was trained on?") from None
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AnalysisError(f"--path {checkpoint}: cannot load it with DATA_BIN {data} ({reason})") from None
    return models[0], task, task.build_criterion(cfg.criterion)


def check_translation(task_cfg, data: Path, checkpoint: Path) -> None:
    """Raise AnalysisError unless ``task_cfg`` (the checkpoint's) is fairseq's translation task or
    one derived from it, and ``data`` holds the dictionaries of its language pair (the pair
    inferred from the file names, as fairseq does, where the run did not name it)."""
    task_class = TASK_REGISTRY.get(task_cfg._name)
    if task_class is None or not issubclass(task_class, TranslationTask):
        raise AnalysisError(f"--path {checkpoint}: a model of fairseq's {task_cfg._name} task; the analysis "
                            "needs a translation model (fairseq-train --task translation)")
    source, target = task_cfg.get("source_lang"), task_cfg.get("target_lang")
    if source is None or target is None:
        source, target = infer_language_pair(str(data))
    if source is None or target is None:
        missing = "no dictionaries of a translation corpus (dict.SRC.txt and dict.TGT.txt)"
    else:
        absent = [f"dict.{lang}.txt" for lang in (source, target) if not (data / f"dict.{lang}.txt").is_file()]
        missing = f"no {' or '.join(absent)} (the {source}-{target} pair)" if absent else None
    if missing:
        raise AnalysisError(f"DATA_BIN {data}: {missing}; give the fairseq-preprocess output of the "
                            "translation corpus the model was trained on, with its train and --gen-subset splits")


def load_subset(task, subset: str, data: Path, flag: str) -> None:
    """Load ``subset`` of ``data`` into ``task``; a missing split is an error naming ``flag``."""
    try:
        task.load_dataset(subset)
    except FileNotFoundError:
        raise AnalysisError(f"{flag} {subset}: DATA_BIN {data} has no '{subset}' split") from None


def training_batches(task, model, count: int, max_tokens: int, seed: int) -> List[dict]:
    """The first ``count`` batches (fewer if there are fewer) of a shuffled pass over ``train``."""
    iterator = task.get_batch_iterator(
        dataset=task.dataset("train"),
        max_tokens=max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True,
        seed=seed,
    ).next_epoch_itr(shuffle=True)
    return list(itertools.islice(iterator, count))


def run_analysis(args: argparse.Namespace) -> Path:
    """Run the whole analysis of ``args`` (see :func:`get_parser`); return the output folder."""
    levels = parse_prune_levels(args.prune_levels)
    criteria = parse_prune_by(args.prune_by)
    for flag in ("num_batches", "max_tokens", "beam"):
        if getattr(args, flag) < 1:
            raise AnalysisError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    data, checkpoint = Path(args.data), Path(args.path)
    output_dir = Path(args.output_dir) if args.output_dir else checkpoint.parent / "analysis"
    model_name = f"{checkpoint.parent.name}/{checkpoint.name}"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    reason = why_not_writable(output_dir)
    if reason:
        raise AnalysisError(f"--output-dir {output_dir}: {reason}; give a folder you can write to")

    model, task, criterion = load_model(data, checkpoint, args.user_dir)
    model.to(device)
    criterion.to(device)
    load_subset(task, "train", data, "DATA_BIN")
    load_subset(task, args.gen_subset, data, "--gen-subset")
    output_dir.mkdir(parents=True, exist_ok=True)

    batches = training_batches(task, model, args.num_batches, args.max_tokens, args.seed)
    on_device = (utils.move_to_cuda(b, device=device) if device.type == "cuda" else b for b in batches)
    with record_activity(model) as activity:
        sensitivity = average_sensitivity(model, criterion, on_device)
    by_type = sensitivity_by_type(sensitivity)
    summary = [{"type": kind, **summarize(values)} for kind, values in by_type.items()]
    write_csv(output_dir / "sensitivity_by_type.csv", summary)
    plot_sensitivity_by_type(output_dir / "sensitivity_by_type.png", by_type,
                             f"{model_name}: sensitivity per layer type")
    print(f"{PROG}: sensitivity over {len(batches)} training batch(es) of <= {args.max_tokens} "
          f"tokens: {output_dir / 'sensitivity_by_type.csv'}")
    write_csv(output_dir / "zero_sensitivity.csv", zero_sensitivity_causes(sensitivity, activity))

    rows = pruning_curve(model, task, sensitivity, criteria, levels, args)
    write_csv(output_dir / "pruning_bleu.csv", rows)
    plot_pruning_curve(output_dir / "pruning_bleu.png", rows,
                       f"{model_name}: one-shot pruning, {args.gen_subset}, beam {args.beam}")
    return output_dir


def pruning_curve(
    model, task, sensitivity: Dict[str, torch.Tensor], criteria: Sequence[str], levels: Sequence[float], args
) -> List[dict]:
    """BLEU of ``model`` with, for each criterion of ``criteria`` and each percentage of ``levels``,
    that percentage of its non-embedding weights of lowest score set to zero (one global ranking
    per criterion); the model's weights are restored afterwards. The unpruned model is translated
    once, whatever the number of criteria."""
    params = dict(model.named_parameters())
    # scored and ranked before any weight is pruned: the magnitude must be that of the original weights
    scores = {criterion: pruning_scores(criterion, sensitivity, params) for criterion in PRUNING_CRITERIA}
    original = {name: params[name].detach().clone() for name in scores["sensitivity"]}
    rankings = {criterion: SensitivityRanking(scores[criterion]) for criterion in criteria}
    rows, unpruned = [], None
    for criterion, ranking in rankings.items():
        for percent in levels:
            _copy_into(params, original)
            masks = ranking.least_sensitive(percent)
            pruned = prune_(params, masks)
            if pruned or unpruned is None:
                hypotheses, references = translate_subset(
                    task, model, args.gen_subset, args.beam, args.max_tokens, args.post_process
                )
                bleu, signature = corpus_bleu(hypotheses, references)
                unpruned = unpruned if pruned else bleu
            else:
                bleu = unpruned
            rows.append({
                "criterion": criterion,
                "prune_percent": percent,
                "pruned_weights": pruned,
                "prunable_weights": ranking.size,
                "sensitivity_threshold": largest_selected(scores["sensitivity"], masks),
                "magnitude_threshold": largest_selected(scores["magnitude"], masks),
                "bleu": bleu,
            })
            print(f"{PROG}: pruned {percent:g}% by {criterion} ({pruned} of {ranking.size} non-embedding "
                  f"weights): BLEU {bleu:.2f} on {args.gen_subset} ({len(hypotheses)} sentences)", flush=True)
    _copy_into(params, original)
    print(f"{PROG}: BLEU signature: {signature}")
    return rows


@torch.no_grad()
def _copy_into(params: Dict[str, torch.Tensor], values: Dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        params[name].copy_(value)


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``fairseq-sage-analyze`` / ``python -m fairseq_sage.tools.analysis``."""
    args = get_parser().parse_args(argv)
    try:
        output_dir = run_analysis(args)
    except AnalysisError as err:
        sys.exit(f"{PROG}: error: {err}")
    print(f"{PROG}: wrote {output_dir}/sensitivity_by_type.{{csv,png}}, zero_sensitivity.csv "
          "and pruning_bleu.{csv,png}")
