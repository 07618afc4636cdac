#!/usr/bin/env bash
# IWSLT'14 German-English, prepared as fairseq's examples/translation/prepare-iwslt14.sh
# and binarized as fairseq's translation README, with pip-installed tools only.
#
# Usage: bash recipes/iwslt14_de_en/prepare.sh WORKDIR
#
# Environment:
#   IWSLT14_URL     replaces the download address of de-en.tgz (http(s) URL, file:// URL or path)
#   IWSLT14_SHA256  expected sha256 of de-en.tgz (not checked when unset)
#   BPE_MERGES      joint BPE merges (default 10000)
#   SUBWORD_METHOD  bpe (default) or sentencepiece; SPM_VOCAB_SIZE (default 10000) for the latter
#   WORKERS, PYTHON see recipes/common.sh
#
# Writes WORKDIR/orig/iwslt14/ (download), WORKDIR/iwslt14.tokenized.de-en/ (BPE text
# {train,valid,test}.{de,en}, BPE codes `code`, tokenized text in tmp/) and
# WORKDIR/data-bin/iwslt14.tokenized.de-en/ (fairseq binary data and dictionaries).
set -euo pipefail
RECIPE=iwslt14_de_en
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_workdir "$@"

URL=http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz
BPE_MERGES=${BPE_MERGES:-10000}
SPM_VOCAB_SIZE=${SPM_VOCAB_SIZE:-10000}
check_common_settings
require_positive_integer BPE_MERGES
require_positive_integer SPM_VOCAB_SIZE

src=de
tgt=en
lang=de-en
ORIG=$WORKDIR/orig/iwslt14
PREP=$WORKDIR/iwslt14.tokenized.de-en
TMP=$PREP/tmp
BIN=$WORKDIR/data-bin/iwslt14.tokenized.de-en
STEPS_DIR=$PREP/.steps
# The test set is the concatenation of these five, in this order, as in fairseq.
TEST_SETS=(IWSLT14.TED.dev2010 IWSLT14.TEDX.dev2012 IWSLT14.TED.tst2010 IWSLT14.TED.tst2011 IWSLT14.TED.tst2012)
mkdir -p "$TMP"

download() {
    fetch "$URL" "$ORIG/de-en.tgz" "${IWSLT14_SHA256:-}" IWSLT14_URL
}

extract() {
    local l set members=()
    for l in $src $tgt; do
        members+=("$lang/train.tags.$lang.$l")
        for set in "${TEST_SETS[@]}"; do
            members+=("$lang/$set.$lang.$l.xml")
        done
    done
    data_prep archive "$ORIG/de-en.tgz" "$ORIG" "${members[@]}"
}

train_text() {
    local l
    for l in $src $tgt; do
        data_prep iwslt train-text "$ORIG/$lang/train.tags.$lang.$l" "$TMP/train.tags.$lang.raw.$l"
    done
}

tokenize_train() {
    local l
    for l in $src $tgt; do
        data_prep moses tokenize --lang $l --workers "$WORKERS" "$TMP/train.tags.$lang.raw.$l" "$TMP/train.tags.$lang.tok.$l"
    done
}

clean_train() {
    data_prep clean --ratio 1.5 "$TMP/train.tags.$lang.tok" $src $tgt "$TMP/train.tags.$lang.clean" 1 175
}

lowercase_train() {
    local l
    for l in $src $tgt; do
        data_prep moses lowercase "$TMP/train.tags.$lang.clean.$l" "$TMP/train.tags.$lang.$l"
    done
}

test_text() {
    local l set files
    for l in $src $tgt; do
        files=()
        for set in "${TEST_SETS[@]}"; do
            files+=("$ORIG/$lang/$set.$lang.$l.xml")
        done
        data_prep iwslt test-text --output "$TMP/test.raw.$l" "${files[@]}"
        data_prep moses tokenize --lang $l --lowercase "$TMP/test.raw.$l" "$TMP/test.$l"
    done
}

split_train_valid() {
    local l
    for l in $src $tgt; do
        data_prep split --every 23 "$TMP/train.tags.$lang.$l" "$TMP/train.$l" "$TMP/valid.$l"
    done
}

subwords() {
    local l split
    subword_learn "$PREP" "$TMP/train.$src" "$TMP/train.$tgt"
    for l in $src $tgt; do
        for split in train valid test; do
            subword_apply "$PREP" "$TMP/$split.$l" "$PREP/$split.$l"
        done
    done
}

binarize_data() {
    binarize "$BIN" --source-lang $src --target-lang $tgt \
        --trainpref "$PREP/train" --validpref "$PREP/valid" --testpref "$PREP/test"
}

run_step download download
run_step extract extract
run_step train-text train_text
run_step tokenize-train tokenize_train
run_step clean-train clean_train
run_step lowercase-train lowercase_train
run_step test-text test_text
run_step split-train-valid split_train_valid
run_step subwords subwords "$(subword_settings)"
run_step binarize binarize_data "$(subword_settings)"
report_sizes "$PREP" $src $tgt
log "fairseq's published split sizes: train 160239, valid 7283, test 6750"
log "done: text in $PREP, binary data in $BIN"
