#!/usr/bin/env bash
# WMT'16 English-German, rebuilt as Google's wmt16_en_de.tar.gz (google/seq2seq
# bin/data/wmt16_en_de.sh, the data of Vaswani et al. 2017 and fairseq's scaling_nmt
# example) and binarized as fairseq's examples/scaling_nmt/README.md, with
# pip-installed tools only.
#
#   train: Europarl v7 + CommonCrawl + News Commentary v11 (in that order), Moses-tokenized
#          (no aggressive hyphen splitting), cleaned to 1..80 tokens with ratio 9
#   valid: newstest2013, test: newstest2014 (from its SGM files), tokenized, not cleaned
#   joint BPE with BPE_MERGES merges learnt on train.de + train.en; joined dictionary
#
# Usage: bash recipes/wmt16_en_de/prepare.sh WORKDIR
#
# Environment:
#   WMT16_EUROPARL_URL, WMT16_COMMONCRAWL_URL, WMT16_NC_URL, WMT16_DEV_URL
#                   replace the download addresses (http(s) URL, file:// URL or path)
#   WMT16_EUROPARL_SHA256, WMT16_COMMONCRAWL_SHA256, WMT16_NC_SHA256, WMT16_DEV_SHA256
#                   expected sha256 of each archive (not checked when unset)
#   BPE_MERGES      joint BPE merges (default 32000)
#   SUBWORD_METHOD  bpe (default) or sentencepiece; SPM_VOCAB_SIZE (default 32000) for the latter
#   WORKERS, PYTHON see recipes/common.sh
#
# Writes WORKDIR/orig/wmt16_en_de/ (downloads), WORKDIR/wmt16_en_de/ (BPE text
# {train,valid,test}.{en,de}, BPE codes `code`, raw and tokenized text in tmp/) and
# WORKDIR/data-bin/wmt16_en_de/ (fairseq binary data and dictionaries).
set -euo pipefail
RECIPE=wmt16_en_de
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_workdir "$@"

EUROPARL_URL=http://www.statmt.org/europarl/v7/de-en.tgz
COMMONCRAWL_URL=http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz
NC_URL=http://data.statmt.org/wmt16/translation-task/training-parallel-nc-v11.tgz
DEV_URL=http://data.statmt.org/wmt16/translation-task/dev.tgz
BPE_MERGES=${BPE_MERGES:-32000}
SPM_VOCAB_SIZE=${SPM_VOCAB_SIZE:-32000}
check_common_settings
require_positive_integer BPE_MERGES
require_positive_integer SPM_VOCAB_SIZE

src=en
tgt=de
ORIG=$WORKDIR/orig/wmt16_en_de
PREP=$WORKDIR/wmt16_en_de
TMP=$PREP/tmp
BIN=$WORKDIR/data-bin/wmt16_en_de
STEPS_DIR=$PREP/.steps
mkdir -p "$TMP"

download() {
    fetch "$EUROPARL_URL" "$ORIG/europarl-v7-de-en.tgz" "${WMT16_EUROPARL_SHA256:-}" WMT16_EUROPARL_URL
    fetch "$COMMONCRAWL_URL" "$ORIG/common-crawl.tgz" "${WMT16_COMMONCRAWL_SHA256:-}" WMT16_COMMONCRAWL_URL
    fetch "$NC_URL" "$ORIG/nc-v11.tgz" "${WMT16_NC_SHA256:-}" WMT16_NC_URL
    fetch "$DEV_URL" "$ORIG/dev.tgz" "${WMT16_DEV_SHA256:-}" WMT16_DEV_URL
}

extract() {
    data_prep archive "$ORIG/europarl-v7-de-en.tgz" "$ORIG/europarl-v7-de-en" \
        europarl-v7.de-en.en europarl-v7.de-en.de
    data_prep archive "$ORIG/common-crawl.tgz" "$ORIG/common-crawl" \
        commoncrawl.de-en.en commoncrawl.de-en.de
    data_prep archive "$ORIG/nc-v11.tgz" "$ORIG/nc-v11" \
        training-parallel-nc-v11/news-commentary-v11.de-en.en training-parallel-nc-v11/news-commentary-v11.de-en.de
    data_prep archive "$ORIG/dev.tgz" "$ORIG/dev" \
        dev/newstest2013.en dev/newstest2013.de dev/newstest2014-deen-ref.en.sgm dev/newstest2014-deen-src.de.sgm
}

raw_text() {
    local l
    for l in $src $tgt; do
        concat_files "$TMP/train.$l" \
            "$ORIG/europarl-v7-de-en/europarl-v7.de-en.$l" \
            "$ORIG/common-crawl/commoncrawl.de-en.$l" \
            "$ORIG/nc-v11/training-parallel-nc-v11/news-commentary-v11.de-en.$l"
        concat_files "$TMP/newstest2013.$l" "$ORIG/dev/dev/newstest2013.$l"
    done
    data_prep sgm "$ORIG/dev/dev/newstest2014-deen-ref.en.sgm" "$TMP/newstest2014.en"
    data_prep sgm "$ORIG/dev/dev/newstest2014-deen-src.de.sgm" "$TMP/newstest2014.de"
}

tokenize() {
    local corpus l
    for corpus in train newstest2013 newstest2014; do
        for l in $src $tgt; do
            data_prep moses tokenize --lang $l --workers "$WORKERS" "$TMP/$corpus.$l" "$TMP/$corpus.tok.$l"
        done
    done
}

clean_train() {
    data_prep clean "$TMP/train.tok" $tgt $src "$TMP/train.tok.clean" 1 80
}

subwords() {
    local l
    subword_learn "$PREP" "$TMP/train.tok.clean.$tgt" "$TMP/train.tok.clean.$src"
    for l in $src $tgt; do
        subword_apply "$PREP" "$TMP/train.tok.clean.$l" "$PREP/train.$l"
        subword_apply "$PREP" "$TMP/newstest2013.tok.$l" "$PREP/valid.$l"
        subword_apply "$PREP" "$TMP/newstest2014.tok.$l" "$PREP/test.$l"
    done
}

binarize_data() {
    binarize "$BIN" --source-lang $src --target-lang $tgt \
        --trainpref "$PREP/train" --validpref "$PREP/valid" --testpref "$PREP/test" \
        --nwordssrc 32768 --nwordstgt 32768 --joined-dictionary
}

run_step download download
run_step extract extract
run_step raw-text raw_text
run_step tokenize tokenize
run_step clean-train clean_train
run_step subwords subwords "$(subword_settings)"
run_step binarize binarize_data "$(subword_settings)"
report_sizes "$PREP" $src $tgt
log "Google's wmt16_en_de.tar.gz: train about 4.5M pairs, valid (newstest2013) 3000, test (newstest2014) 3003"
log "done: text in $PREP, binary data in $BIN"
