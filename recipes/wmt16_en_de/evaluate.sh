#!/usr/bin/env bash
# Evaluate a WMT'16 En->De model on newstest2014 as Vaswani et al. (2017) and Ott et al. (2018):
# average the last NUM_AVG epoch checkpoints, beam 4, length penalty 0.6.
#
# Usage: bash recipes/wmt16_en_de/evaluate.sh WORKDIR [FAIRSEQ_GENERATE_FLAGS...]
#   extra flags are appended to the fairseq-generate command
#
# Reports two scores:
#   tokenized BLEU with compound splitting  (recipes/wmt16_en_de/compound_split_bleu.py: the
#                   convention of the papers above, not comparable with other setups)
#   sacreBLEU       the hypotheses detokenized with sacremoses, against the raw newstest2014
#                   reference (WORKDIR/wmt16_en_de/tmp/newstest2014.de), sacreBLEU's defaults
#
# Environment:
#   OPTIMIZER  (default adam_sage) picks WORKDIR/checkpoints/wmt16_OPTIMIZER/
#   NUM_AVG    number of last epoch checkpoints to average (default 10)
#   PYTHON     see recipes/common.sh
#
# Writes checkpoint.avgNUM_AVG.pt into the checkpoint folder, and WORKDIR/results/
# wmt16_OPTIMIZER/: generate.out, hyp.tok, hyp.detok and `results` (both scores). Each is
# skipped while it is newer than what it is made from.
set -euo pipefail
RECIPE=wmt16_en_de
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

check_arguments 1 "bash recipes/wmt16_en_de/evaluate.sh WORKDIR [FAIRSEQ_GENERATE_FLAGS...]" "$@"
existing_workdir "$1"
shift
OPTIMIZER=${OPTIMIZER:-adam_sage}
NUM_AVG=${NUM_AVG:-10}
require_positive_integer NUM_AVG
BIN=$WORKDIR/data-bin/wmt16_en_de
REFERENCE=$WORKDIR/wmt16_en_de/tmp/newstest2014.de
SAVE_DIR=$WORKDIR/checkpoints/wmt16_$OPTIMIZER
AVERAGE=$SAVE_DIR/checkpoint.avg$NUM_AVG.pt
OUT=$WORKDIR/results/wmt16_$OPTIMIZER
[[ -f $SAVE_DIR/checkpoint_last.pt ]] ||
    fail "$SAVE_DIR/checkpoint_last.pt missing; run OPTIMIZER=$OPTIMIZER recipes/wmt16_en_de/train.sh $WORKDIR first"
[[ -f $REFERENCE ]] || fail "$REFERENCE missing; run recipes/wmt16_en_de/prepare.sh $WORKDIR first"
mkdir -p "$OUT"
# prepare.sh records its subword method (SUBWORD_METHOD) in this marker: "bpe ..." or "sentencepiece ..."
remove_bpe=--remove-bpe
if [[ "$(cat "$WORKDIR/wmt16_en_de/.steps/subwords.done" 2>/dev/null)" == sentencepiece* ]]; then
    remove_bpe=--remove-bpe=sentencepiece
fi
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [[ -f $AVERAGE && $AVERAGE -nt $SAVE_DIR/checkpoint_last.pt ]]; then
    log "skip averaging: $AVERAGE is newer than checkpoint_last.pt"
else
    log "averaging the last $NUM_AVG epoch checkpoints of $SAVE_DIR"
    "$PYTHON" -m fairseq_sage.tools.average_checkpoints --inputs "$SAVE_DIR" \
        --num-epoch-checkpoints "$NUM_AVG" --output "$AVERAGE"
fi
if [[ -f $OUT/results && $OUT/results -nt $AVERAGE ]]; then
    log "skip evaluation: $OUT/results is newer than $AVERAGE"
    cat "$OUT/results"
    exit 0
fi

log "translating newstest2014 with $AVERAGE"
"$PYTHON" -m fairseq_cli.generate "$BIN" \
    --user-dir "$REPO_ROOT/fairseq_sage" --source-lang en --target-lang de \
    --path "$AVERAGE" --gen-subset test --beam 4 --lenpen 0.6 "$remove_bpe" \
    --batch-size 128 --required-batch-size-multiple 1 "$@" >"$OUT/generate.out.partial"
mv "$OUT/generate.out.partial" "$OUT/generate.out"
compound_split_bleu=$("$PYTHON" "$RECIPES_DIR/wmt16_en_de/compound_split_bleu.py" "$OUT/generate.out")

ordered_hypotheses "$OUT/generate.out" >"$OUT/hyp.tok.partial"
require_one_hypothesis_per_line "$OUT/hyp.tok.partial" "$REFERENCE" "$OUT/generate.out"
mv "$OUT/hyp.tok.partial" "$OUT/hyp.tok"
data_prep moses detokenize --lang de "$OUT/hyp.tok" "$OUT/hyp.detok"
sacrebleu=$("$PYTHON" -m sacrebleu "$REFERENCE" --input "$OUT/hyp.detok" --metrics bleu --width 2 --format text)

{
    echo "checkpoint: $AVERAGE (average of the last $NUM_AVG epochs)"
    echo "tokenized BLEU with compound splitting (beam 4, lenpen 0.6): $compound_split_bleu"
    echo "sacreBLEU (detokenized, raw newstest2014 reference): $sacrebleu"
} >"$OUT/results.partial"
mv "$OUT/results.partial" "$OUT/results"
cat "$OUT/results"
