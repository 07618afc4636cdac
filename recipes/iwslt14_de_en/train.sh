#!/usr/bin/env bash
# Train a Transformer on IWSLT'14 De->En: fairseq's examples/translation recipe with the
# SAGE paper's optimizer settings (Liang et al., 2022, Table 10).
#
# Usage: bash recipes/iwslt14_de_en/train.sh WORKDIR [FAIRSEQ_TRAIN_FLAGS...]
#   extra flags are appended to the fairseq-train command (the last occurrence of a flag wins)
#
# Environment:
#   OPTIMIZER  adam_sage (default): --optimizer adam_sage --lr 1e-3 --sage-beta0 0.8
#              adam:                --optimizer adam --lr 5e-4
#   PYTHON     see recipes/common.sh
#
# checkpoint_best.pt is the epoch with the lowest validation loss (fairseq's default).
# Reads WORKDIR/data-bin/iwslt14.tokenized.de-en (recipes/iwslt14_de_en/prepare.sh) and
# writes WORKDIR/checkpoints/iwslt14_OPTIMIZER/ (checkpoints and train.log). A finished run
# with the same command is skipped; an interrupted one resumes from checkpoint_last.pt.
set -euo pipefail
RECIPE=iwslt14_de_en
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

check_arguments 1 "bash recipes/iwslt14_de_en/train.sh WORKDIR [FAIRSEQ_TRAIN_FLAGS...]" "$@"
existing_workdir "$1" "run recipes/iwslt14_de_en/prepare.sh $1 first"
shift
OPTIMIZER=${OPTIMIZER:-adam_sage}
case $OPTIMIZER in
adam_sage) optimizer_flags=(--optimizer adam_sage --lr 1e-3 --sage-beta0 0.8) ;;
adam) optimizer_flags=(--optimizer adam --lr 5e-4) ;;
*) fail "OPTIMIZER=$OPTIMIZER: must be adam_sage or adam" ;;
esac

BIN=$WORKDIR/data-bin/iwslt14.tokenized.de-en
SAVE_DIR=$WORKDIR/checkpoints/iwslt14_$OPTIMIZER
[[ -f $BIN/dict.de.txt && -f $BIN/dict.en.txt ]] ||
    fail "$BIN has no binarized data; run recipes/iwslt14_de_en/prepare.sh $WORKDIR first"

command=(
    "$PYTHON" "$RECIPES_DIR/quiet.py" fairseq_cli.train "$BIN" --user-dir "$REPO_ROOT/fairseq_sage"
    --source-lang de --target-lang en
    --arch transformer_iwslt_de_en --share-decoder-input-output-embed
    "${optimizer_flags[@]}" --adam-betas '(0.9, 0.98)' --clip-norm 0.0
    --lr-scheduler inverse_sqrt --warmup-updates 8000
    --dropout 0.3 --weight-decay 0.0001
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --max-tokens 4096 --max-epoch 60
    --save-dir "$SAVE_DIR" --update-epoch-batch-itr True --log-format simple --log-interval 100
    "$@"
)
train_once "$SAVE_DIR" checkpoint_best.pt "${command[@]}"
