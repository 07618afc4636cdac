"""Side-by-side table of the Multi30k quickstart runs (markdown and JSON).

    python recipes/multi30k/report.py WORKDIR adam adam_sage

For each optimizer it reads WORKDIR/eval/OPTIMIZER/test{2016,2017}.sacrebleu.json (written by
evaluate.sh) and WORKDIR/checkpoints/OPTIMIZER/checkpoint_last.pt (best validation loss,
training wall time and number of updates, as fairseq recorded them), then writes
WORKDIR/results.md and WORKDIR/results.json atomically, prints the markdown table, and draws
WORKDIR/learning_curves.png from the train logs (curves.py).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from curves import plot_learning_curves  # recipes/multi30k/curves.py, beside this script

from fairseq_sage.checkpoints import load_checkpoint
from fairseq_sage.files import write_atomic

TEST_SETS = ("test2016", "test2017")
COLUMNS = [
    ("optimizer", "optimizer", "{}"),
    ("bleu_test2016", "BLEU test2016", "{:.2f}"),
    ("bleu_test2017", "BLEU test2017", "{:.2f}"),
    ("best_valid_loss", "best valid loss (bits)", "{:.3f}"),
    ("train_wall_seconds", "train wall time (s)", "{:.0f}"),
    ("updates", "updates", "{}"),
]


class ReportError(Exception):
    """A missing or unreadable result file; the message names it and the step to run."""


def read_bleu(path: Path) -> Dict[str, object]:
    """sacreBLEU's score and signature from a ``sacrebleu --format json`` file."""
    try:
        result = json.loads(path.read_text())
        return {"score": float(result["score"]), "signature": result["signature"]}
    except (OSError, ValueError, KeyError) as error:
        raise ReportError(f"{path}: no sacreBLEU result ({error}); run evaluate.sh first") from None


def read_training(checkpoint: Path) -> Dict[str, float]:
    """Best validation loss, cumulative training time and updates stored in a fairseq checkpoint."""
    if not checkpoint.is_file():
        raise ReportError(f"{checkpoint} missing; run train.sh first")
    state = load_checkpoint(str(checkpoint))
    extra = state["extra_state"]
    return {
        "best_valid_loss": float(extra["best"]),
        "train_wall_seconds": float(extra["previous_training_time"]),
        "updates": int(state["optimizer_history"][-1]["num_updates"]),
    }


def collect(workdir: Path, optimizer: str) -> Dict[str, object]:
    """One table row: the optimizer's BLEU on both test sets and its training statistics."""
    row: Dict[str, object] = {"optimizer": optimizer}
    for test in TEST_SETS:
        bleu = read_bleu(workdir / "eval" / optimizer / f"{test}.sacrebleu.json")
        row[f"bleu_{test}"] = bleu["score"]
        row["sacrebleu_signature"] = bleu["signature"]
    row.update(read_training(workdir / "checkpoints" / optimizer / "checkpoint_last.pt"))
    return row


def markdown_table(rows: List[Dict[str, object]]) -> str:
    """The rows as a markdown table with the columns of ``COLUMNS``."""
    lines = [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    for row in rows:
        cells = [fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("optimizers", nargs="+")
    args = parser.parse_args(argv)
    try:
        rows = [collect(args.workdir, optimizer) for optimizer in args.optimizers]
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    signature = rows[0]["sacrebleu_signature"]
    table = markdown_table(rows)
    markdown = (
        "# Multi30k De->En quickstart\n\n"
        + table
        + f"\nsacreBLEU signature: `{signature}`; validation loss is label-smoothed cross-entropy "
        "in bits per target token; wall time is fairseq's cumulative training time.\n"
    )
    write_atomic(args.workdir / "results.md", markdown)
    write_atomic(args.workdir / "results.json", json.dumps(rows, indent=2) + "\n")
    print(table, end="")
    print(f"(written to {args.workdir / 'results.md'} and {args.workdir / 'results.json'})")
    plot_learning_curves(args.workdir, args.optimizers, args.workdir / "learning_curves.png")
    print(f"learning curves: {args.workdir / 'learning_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
