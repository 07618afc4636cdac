#!/usr/bin/env bash
# Validation BLEU of one study run, scored the way recipes/multi30k/evaluate.sh scores the test sets:
# fairseq-generate with checkpoint_best.pt on the `valid` subset (beam 5, at most 1.2 * source
# length + 10 tokens), the sentencepiece pieces decoded to plain text in the set's order, and
# sacreBLEU (13a tokenization, mixed case) against the raw references.
#
# Usage: bash studies/multi30k/valid_bleu.sh RUN_DIR OPTIMIZER
#   RUN_DIR  a train.sh WORKDIR (data-bin, text, spm, checkpoints/OPTIMIZER/checkpoint_best.pt)
#
# Writes RUN_DIR/eval/OPTIMIZER/valid.generate, valid.hyp and valid.sacrebleu.json, each atomically.
set -euo pipefail
RECIPE=multi30k-study
source "$(dirname "${BASH_SOURCE[0]}")/../../recipes/common.sh"

[[ $# -eq 2 && $1 != -* ]] || {
    echo "usage: bash studies/multi30k/valid_bleu.sh RUN_DIR adam|adam_sage" >&2
    exit 2
}
RUN_DIR="$(cd "$1" 2>/dev/null && pwd)" || fail "RUN_DIR $1: no such folder"
OPTIMIZER=$2
CHECKPOINT=$RUN_DIR/checkpoints/$OPTIMIZER/checkpoint_best.pt
REFERENCE=$RUN_DIR/text/valid.en
OUT=$RUN_DIR/eval/$OPTIMIZER
[[ -f $CHECKPOINT ]] || fail "$CHECKPOINT missing; run recipes/multi30k/train.sh $RUN_DIR $OPTIMIZER first"
[[ -f $REFERENCE ]] || fail "$REFERENCE missing; run recipes/multi30k/prepare.sh first"
mkdir -p "$OUT"

PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m fairseq_cli.generate "$RUN_DIR/data-bin" \
    --user-dir "$REPO_ROOT/fairseq_sage" --source-lang de --target-lang en \
    --path "$CHECKPOINT" --gen-subset valid --beam 5 --lenpen 1 --max-len-a 1.2 --max-len-b 10 \
    --batch-size 128 --required-batch-size-multiple 1 \
    >"$OUT/valid.generate.partial"
mv "$OUT/valid.generate.partial" "$OUT/valid.generate"
# H-<id> <score> <pieces>: sort by sentence id to restore the set's order
awk -F '\t' '/^H-/ { print substr($1, 3) "\t" $3 }' "$OUT/valid.generate" | sort -t $'\t' -k1,1n | cut -f2 |
    data_prep sentencepiece_bpe decode --model "$RUN_DIR/spm/spm.model" >"$OUT/valid.hyp.partial"
hypotheses=$(wc -l <"$OUT/valid.hyp.partial")
[[ $hypotheses -eq $(wc -l <"$REFERENCE") ]] ||
    fail "$OUT/valid.generate has $hypotheses hypotheses for the $(wc -l <"$REFERENCE") lines of $REFERENCE"
mv "$OUT/valid.hyp.partial" "$OUT/valid.hyp"
"$PYTHON" -m sacrebleu "$REFERENCE" --input "$OUT/valid.hyp" --metrics bleu --width 2 --format json \
    >"$OUT/valid.sacrebleu.json.partial"
mv "$OUT/valid.sacrebleu.json.partial" "$OUT/valid.sacrebleu.json"
log "$(basename "$RUN_DIR") valid: $(grep -o '"score": [0-9.]*' "$OUT/valid.sacrebleu.json")"
