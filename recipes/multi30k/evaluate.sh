#!/usr/bin/env bash
# Translate Multi30k test sets (or the validation set) with one trained model and score them with
# sacreBLEU.
#
# Usage: bash recipes/multi30k/evaluate.sh WORKDIR OPTIMIZER [SET...]
#   SET  test2016, test2017 (the default: both) or valid
#
# fairseq-generate with checkpoint_best.pt (or checkpoints/OPTIMIZER/$EVAL_MODEL.pt), beam 5, at most 1.2 * source length + 10 tokens (as
# fairseq's translation example validates; no Multi30k reference comes near it); the hypotheses
# (sentencepiece pieces, in the set's order) are decoded to plain text and scored with sacreBLEU
# (default 13a tokenization, mixed case) against the raw references.
#
# Writes, for each SET, WORKDIR/eval/OPTIMIZER/SET.generate (fairseq's output), SET.log (its log), SET.hyp
# (detokenized hypotheses) and SET.sacrebleu.json, each atomically (in eval/OPTIMIZER/EVAL_MODEL/
# for another EVAL_MODEL than checkpoint_best). A set whose score is newer than the checkpoint is
# skipped.
set -euo pipefail
RECIPE=multi30k
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

check_arguments 2 "bash recipes/multi30k/evaluate.sh WORKDIR adam|adam_sage [test2016|test2017|valid...]" "$@"
existing_workdir "$1"
OPTIMIZER=$2
shift 2
sets=("$@")
[[ ${#sets[@]} -gt 0 ]] || sets=(test2016 test2017)
declare -A SUBSETS=([test2016]=test [test2017]=test1 [valid]=valid)
for name in "${sets[@]}"; do
    [[ -n ${SUBSETS[$name]:-} ]] || fail "unknown set $name; give test2016, test2017 or valid"
done
EVAL_MODEL=${EVAL_MODEL:-checkpoint_best}
CHECKPOINT=$WORKDIR/checkpoints/$OPTIMIZER/$EVAL_MODEL.pt
OUT=$WORKDIR/eval/$OPTIMIZER
[[ $EVAL_MODEL == checkpoint_best ]] || OUT=$OUT/$EVAL_MODEL
[[ -f $CHECKPOINT ]] || fail "$CHECKPOINT missing; run recipes/multi30k/train.sh $WORKDIR $OPTIMIZER first"
mkdir -p "$OUT"

# evaluate_set NAME: translate the set NAME (fairseq subset SUBSETS[NAME]) and score it.
evaluate_set() {
    local name=$1 reference=$WORKDIR/text/$1.en
    local score=$OUT/$name.sacrebleu.json
    [[ -f $reference ]] || fail "$reference missing; run recipes/multi30k/prepare.sh first"
    if [[ -f $score && $score -nt $CHECKPOINT ]]; then
        log "skip $OPTIMIZER $name: $score is up to date"
        return 0
    fi
    local status=0
    quiet_python fairseq_cli.generate "$WORKDIR/data-bin" \
        --user-dir "$REPO_ROOT/fairseq_sage" --source-lang de --target-lang en \
        --path "$CHECKPOINT" --gen-subset "${SUBSETS[$name]}" --beam 5 --lenpen 1 --max-len-a 1.2 --max-len-b 10 \
        --batch-size 128 --required-batch-size-multiple 1 \
        >"$OUT/$name.generate.partial" 2>"$OUT/$name.log" || status=$?
    show_log_problems "$OUT/$name.log" "$status" || fail "fairseq-generate failed on $name; see $OUT/$name.log"
    mv "$OUT/$name.generate.partial" "$OUT/$name.generate"
    ordered_hypotheses "$OUT/$name.generate" |
        data_prep sentencepiece_bpe decode --model "$WORKDIR/spm/spm.model" >"$OUT/$name.hyp.partial"
    require_one_hypothesis_per_line "$OUT/$name.hyp.partial" "$reference" "$OUT/$name.generate"
    mv "$OUT/$name.hyp.partial" "$OUT/$name.hyp"
    "$PYTHON" -m sacrebleu "$reference" --input "$OUT/$name.hyp" --metrics bleu --width 2 --format json \
        >"$score.partial"
    mv "$score.partial" "$score"
    log "$OPTIMIZER $name: sacreBLEU $(grep -o '"score": [0-9.]*' "$score" | cut -d' ' -f2) (translations: $OUT/$name.hyp, log: $OUT/$name.log)"
}

for name in "${sets[@]}"; do
    evaluate_set "$name"
done
