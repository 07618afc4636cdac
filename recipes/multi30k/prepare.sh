#!/usr/bin/env bash
# Multi30k (task 1) German->English for the CPU quickstart: checksum-verified copies of the
# raw gzipped text, one joint sentencepiece BPE model on train.de + train.en, binarized with
# a joined dictionary.
#
# Usage: bash recipes/multi30k/prepare.sh [--data DIR] WORKDIR
#
# The raw files come from DIR (--data), else from ../shared/data/multi30k next to the
# repository when that folder exists, else they are downloaded from the Multi30k repository.
# Every file must match its sha256 in recipes/multi30k/SHA256SUMS.
#
# Environment:
#   MAX_TRAIN_LINES      keep only the first N training pairs (default: all 29,000)
#   MAX_VALID_LINES      keep only the first N validation pairs (default: all 1,014)
#   MAX_TEST_LINES       keep only the first N pairs of each test set (default: all 1,000)
#   SPM_VOCAB_SIZE       sentencepiece vocabulary size (default 8000)
#   MULTI30K_SHA256SUMS  checksum file to verify against instead of the recipe's own
#   WORKERS, PYTHON      see recipes/common.sh
#
# Writes WORKDIR/orig/ (verified .gz copies), WORKDIR/text/ (raw text: train, valid,
# test2016, test2017), WORKDIR/spm/ (spm.model), WORKDIR/bpe/ (pieces) and WORKDIR/data-bin/
# (fairseq binary data; test2016 is the subset `test`, test2017 the subset `test1`).
set -euo pipefail
RECIPE=multi30k
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
source "$RECIPES_DIR/multi30k/args.sh"
parse_data_and_workdir prepare.sh "$@"

BASE_URL=https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw
SHA256SUMS=${MULTI30K_SHA256SUMS:-$RECIPES_DIR/multi30k/SHA256SUMS}
SPM_VOCAB_SIZE=${SPM_VOCAB_SIZE:-8000}
MAX_TRAIN_LINES=${MAX_TRAIN_LINES:-all}
MAX_VALID_LINES=${MAX_VALID_LINES:-all}
MAX_TEST_LINES=${MAX_TEST_LINES:-all}
require_positive_integer WORKERS
require_positive_integer SPM_VOCAB_SIZE
[[ $MAX_TRAIN_LINES == all ]] || require_positive_integer MAX_TRAIN_LINES
[[ $MAX_VALID_LINES == all ]] || require_positive_integer MAX_VALID_LINES
[[ $MAX_TEST_LINES == all ]] || require_positive_integer MAX_TEST_LINES
[[ -f $SHA256SUMS ]] || fail "MULTI30K_SHA256SUMS=$SHA256SUMS: no such checksum file"

ORIG=$WORKDIR/orig
TEXT=$WORKDIR/text
SPM=$WORKDIR/spm
BPE=$WORKDIR/bpe
BIN=$WORKDIR/data-bin
STEPS_DIR=$WORKDIR/.steps
# original split name -> name used here
SPLITS=(train:train val:valid test_2016_flickr:test2016 test_2017_flickr:test2017)
LANGS=(de en)
mkdir -p "$ORIG" "$TEXT" "$SPM" "$BPE"

fetch_files() {
    local sha256 name source
    while read -r sha256 name; do
        source=${DATA:+$DATA/$name}
        data_prep download "$BASE_URL/$name" "$ORIG/$name" --sha256 "$sha256" --override "$source" ||
            fail "${source:-$BASE_URL/$name} does not match its sha256 in $SHA256SUMS (or cannot be read); use an intact copy of Multi30k (--data DIR)"
    done <"$SHA256SUMS"
}

decompress() {
    local split original name l max_lines
    for split in "${SPLITS[@]}"; do
        original=${split%%:*}
        name=${split##*:}
        case $name in
        train) max_lines=$MAX_TRAIN_LINES ;;
        valid) max_lines=$MAX_VALID_LINES ;;
        test*) max_lines=$MAX_TEST_LINES ;;
        esac
        for l in "${LANGS[@]}"; do
            # awk reads its whole input, so gzip never dies of SIGPIPE under pipefail
            gzip -dc "$ORIG/$original.$l.gz" | awk -v n="$max_lines" 'n == "all" || NR <= n' >"$TEXT/$name.$l.partial"
            mv "$TEXT/$name.$l.partial" "$TEXT/$name.$l"
        done
        [[ $(wc -l <"$TEXT/$name.de") -eq $(wc -l <"$TEXT/$name.en") ]] ||
            fail "$TEXT/$name.de and $TEXT/$name.en differ in line count; delete $WORKDIR/orig and run again"
    done
}

train_sentencepiece() {
    data_prep sentencepiece_bpe train --inputs "$TEXT/train.de" "$TEXT/train.en" \
        --model-prefix "$SPM/spm" --vocab-size "$SPM_VOCAB_SIZE"
}

encode() {
    local split name l
    for split in "${SPLITS[@]}"; do
        name=${split##*:}
        for l in "${LANGS[@]}"; do
            data_prep sentencepiece_bpe encode --model "$SPM/spm.model" <"$TEXT/$name.$l" >"$BPE/$name.$l.partial"
            mv "$BPE/$name.$l.partial" "$BPE/$name.$l"
        done
    done
}

binarize_data() {
    binarize "$BIN" --source-lang de --target-lang en --joined-dictionary \
        --trainpref "$BPE/train" --validpref "$BPE/valid" --testpref "$BPE/test2016,$BPE/test2017"
}

text_settings="max_train_lines=$MAX_TRAIN_LINES max_valid_lines=$MAX_VALID_LINES max_test_lines=$MAX_TEST_LINES"
subword_settings="$text_settings vocab=$SPM_VOCAB_SIZE"
run_step fetch fetch_files "source=${DATA:-$BASE_URL}"
run_step decompress decompress "$text_settings"
run_step sentencepiece train_sentencepiece "$subword_settings"
run_step encode encode "$subword_settings"
run_step binarize binarize_data "$subword_settings"
log "train: $(wc -l <"$TEXT/train.en") pairs, valid: $(wc -l <"$TEXT/valid.en"), test2016: $(wc -l <"$TEXT/test2016.en"), test2017: $(wc -l <"$TEXT/test2017.en")"
log "done: binary data in $BIN"
