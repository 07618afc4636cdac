#!/usr/bin/env bash
# Translate Multi30k test2016 and test2017 with one trained model and score them with sacreBLEU.
#
# Usage: bash recipes/multi30k/evaluate.sh WORKDIR OPTIMIZER
#
# fairseq-generate with checkpoint_best.pt, beam 5, at most 1.2 * source length + 10 tokens
# (as fairseq's translation example validates; no Multi30k reference comes near it); the hypotheses (sentencepiece pieces, in
# test-set order) are decoded to plain text and scored with sacreBLEU (default 13a
# tokenization, mixed case) against the raw references.
#
# Writes, for TEST in test2016 test2017, WORKDIR/eval/OPTIMIZER/TEST.generate (fairseq's
# output), TEST.hyp (detokenized hypotheses) and TEST.sacrebleu.json. A test set whose score
# is newer than checkpoint_best.pt is skipped.
set -euo pipefail
RECIPE=multi30k
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

[[ $# -eq 2 && $1 != -* ]] || {
    echo "usage: bash recipes/multi30k/evaluate.sh WORKDIR adam|adam_sage" >&2
    exit 2
}
WORKDIR="$(cd "$1" 2>/dev/null && pwd)" || fail "WORKDIR $1: no such folder"
OPTIMIZER=$2
CHECKPOINT=$WORKDIR/checkpoints/$OPTIMIZER/checkpoint_best.pt
OUT=$WORKDIR/eval/$OPTIMIZER
[[ -f $CHECKPOINT ]] || fail "$CHECKPOINT missing; run recipes/multi30k/train.sh $WORKDIR $OPTIMIZER first"
mkdir -p "$OUT"

# evaluate_test NAME SUBSET: translate fairseq subset SUBSET (test set NAME) and score it.
evaluate_test() {
    local name=$1 subset=$2 reference=$WORKDIR/text/$1.en
    local score=$OUT/$name.sacrebleu.json
    if [[ -f $score && $score -nt $CHECKPOINT ]]; then
        log "skip $OPTIMIZER $name: $score is up to date"
        return 0
    fi
    log "translating $name with $OPTIMIZER (beam 5)"
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m fairseq_cli.generate "$WORKDIR/data-bin" \
        --user-dir "$REPO_ROOT/fairseq_sage" --source-lang de --target-lang en \
        --path "$CHECKPOINT" --gen-subset "$subset" --beam 5 --lenpen 1 --max-len-a 1.2 --max-len-b 10 \
        --batch-size 128 --required-batch-size-multiple 1 \
        >"$OUT/$name.generate.partial"
    mv "$OUT/$name.generate.partial" "$OUT/$name.generate"
    # H-<id> <score> <pieces>: sort by sentence id to restore the test-set order
    awk -F '\t' '/^H-/ { print substr($1, 3) "\t" $3 }' "$OUT/$name.generate" | sort -t $'\t' -k1,1n | cut -f2 |
        data_prep sentencepiece_bpe decode --model "$WORKDIR/spm/spm.model" >"$OUT/$name.hyp.partial"
    [[ $(wc -l <"$OUT/$name.hyp.partial") -eq $(wc -l <"$reference") ]] ||
        fail "$OUT/$name.generate has $(wc -l <"$OUT/$name.hyp.partial") hypotheses for the $(wc -l <"$reference") lines of $reference"
    mv "$OUT/$name.hyp.partial" "$OUT/$name.hyp"
    "$PYTHON" -m sacrebleu "$reference" --input "$OUT/$name.hyp" --metrics bleu --width 2 --format json \
        >"$score.partial"
    mv "$score.partial" "$score"
    log "$OPTIMIZER $name: $(grep -o '"score": [0-9.]*' "$score")"
}

evaluate_test test2016 test
evaluate_test test2017 test1
