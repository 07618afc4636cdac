#!/usr/bin/env bash
# Evaluate an IWSLT'14 De->En model on the test set: beam 5, length penalty 1.
#
# Usage: bash recipes/iwslt14_de_en/evaluate.sh WORKDIR [FAIRSEQ_GENERATE_FLAGS...]
#   extra flags are appended to the fairseq-generate command
#
# Reports two scores:
#   tokenized BLEU  fairseq-generate's BLEU4 on the tokenized, lowercased text with BPE
#                   removed (the number the SAGE paper and fairseq's README report)
#   sacreBLEU       on detokenized text: hypotheses and the tokenized lowercased references
#                   (WORKDIR/iwslt14.tokenized.de-en/tmp/test.en) are detokenized with
#                   sacremoses, then scored with sacreBLEU's defaults
#
# Environment: OPTIMIZER (default adam_sage) picks WORKDIR/checkpoints/iwslt14_OPTIMIZER/
# checkpoint_best.pt; PYTHON, see recipes/common.sh.
#
# Writes WORKDIR/results/iwslt14_OPTIMIZER/: generate.out (fairseq's output), hyp.tok,
# hyp.detok, ref.detok and `results` (both scores). Skipped while `results` is newer than the
# checkpoint.
set -euo pipefail
RECIPE=iwslt14_de_en
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

check_arguments 1 "bash recipes/iwslt14_de_en/evaluate.sh WORKDIR [FAIRSEQ_GENERATE_FLAGS...]" "$@"
existing_workdir "$1"
shift
OPTIMIZER=${OPTIMIZER:-adam_sage}
BIN=$WORKDIR/data-bin/iwslt14.tokenized.de-en
REFERENCE=$WORKDIR/iwslt14.tokenized.de-en/tmp/test.en
CHECKPOINT=$WORKDIR/checkpoints/iwslt14_$OPTIMIZER/checkpoint_best.pt
OUT=$WORKDIR/results/iwslt14_$OPTIMIZER
[[ -f $CHECKPOINT ]] || fail "$CHECKPOINT missing; run OPTIMIZER=$OPTIMIZER recipes/iwslt14_de_en/train.sh $WORKDIR first"
[[ -f $REFERENCE ]] || fail "$REFERENCE missing; run recipes/iwslt14_de_en/prepare.sh $WORKDIR first"
if [[ -f $OUT/results && $OUT/results -nt $CHECKPOINT ]]; then
    log "skip evaluation: $OUT/results is newer than $CHECKPOINT"
    cat "$OUT/results"
    exit 0
fi
mkdir -p "$OUT"
# prepare.sh records its subword method (SUBWORD_METHOD) in this marker: "bpe ..." or "sentencepiece ..."
remove_bpe=--remove-bpe
if [[ "$(cat "$WORKDIR/iwslt14.tokenized.de-en/.steps/subwords.done" 2>/dev/null)" == sentencepiece* ]]; then
    remove_bpe=--remove-bpe=sentencepiece
fi

log "translating the test set with $CHECKPOINT"
PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m fairseq_cli.generate "$BIN" \
    --user-dir "$REPO_ROOT/fairseq_sage" --source-lang de --target-lang en \
    --path "$CHECKPOINT" --gen-subset test --beam 5 --lenpen 1 "$remove_bpe" \
    --batch-size 128 --required-batch-size-multiple 1 "$@" >"$OUT/generate.out.partial"
mv "$OUT/generate.out.partial" "$OUT/generate.out"

# last line: "Generate test with beam=5: BLEU4 = 34.52, 67.0/42.5/28.6/19.6 (BP=...)"
tokenized_bleu=$(sed -n 's/^Generate test .*: BLEU4 = \([0-9.]*\),.*/\1/p' "$OUT/generate.out")
[[ -n $tokenized_bleu ]] || fail "$OUT/generate.out has no 'BLEU4 = ' line"

ordered_hypotheses "$OUT/generate.out" >"$OUT/hyp.tok.partial"
require_one_hypothesis_per_line "$OUT/hyp.tok.partial" "$REFERENCE" "$OUT/generate.out"
mv "$OUT/hyp.tok.partial" "$OUT/hyp.tok"
data_prep moses detokenize --lang en "$OUT/hyp.tok" "$OUT/hyp.detok"
data_prep moses detokenize --lang en "$REFERENCE" "$OUT/ref.detok"
sacrebleu=$("$PYTHON" -m sacrebleu "$OUT/ref.detok" --input "$OUT/hyp.detok" --metrics bleu --width 2 --format text)

{
    echo "checkpoint: $CHECKPOINT"
    echo "tokenized BLEU (fairseq-generate, beam 5, lowercased, the paper's metric): $tokenized_bleu"
    echo "sacreBLEU (detokenized): $sacrebleu"
} >"$OUT/results.partial"
mv "$OUT/results.partial" "$OUT/results"
cat "$OUT/results"
