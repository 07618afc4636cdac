#!/usr/bin/env bash
# Train a Transformer-base on WMT'16 En->De: fairseq's examples/scaling_nmt recipe with the
# SAGE paper's optimizer settings (Liang et al., 2022, Table 10).
#
# Usage: bash recipes/wmt16_en_de/train.sh WORKDIR [FAIRSEQ_TRAIN_FLAGS...]
#   extra flags are appended to the fairseq-train command (the last occurrence of a flag wins)
#
# Every update sees 32,768 tokens whatever the number of GPUs: --max-tokens 4096 per GPU and
# --update-freq round(32768 / (4096 * GPUs)), at least 1 (8 on the CPU). --fp16 when a GPU
# is visible (CUDA_VISIBLE_DEVICES limits which).
#
# Environment:
#   OPTIMIZER  adam_sage (default): --optimizer adam_sage --lr 2e-3 --sage-beta0 0.4
#              adam:                --optimizer adam --lr 7e-4
#   MAX_EPOCH  epochs (default 40)
#   PYTHON     see recipes/common.sh
#
# Reads WORKDIR/data-bin/wmt16_en_de (recipes/wmt16_en_de/prepare.sh) and writes
# WORKDIR/checkpoints/wmt16_OPTIMIZER/ (checkpointN.pt of every epoch, checkpoint_best.pt,
# checkpoint_last.pt, train.log). A finished run with the same command is skipped; an
# interrupted one resumes from checkpoint_last.pt.
set -euo pipefail
RECIPE=wmt16_en_de
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

check_arguments 1 "bash recipes/wmt16_en_de/train.sh WORKDIR [FAIRSEQ_TRAIN_FLAGS...]" "$@"
existing_workdir "$1" "run recipes/wmt16_en_de/prepare.sh $1 first"
shift
OPTIMIZER=${OPTIMIZER:-adam_sage}
MAX_EPOCH=${MAX_EPOCH:-40}
require_positive_integer MAX_EPOCH
case $OPTIMIZER in
adam_sage) optimizer_flags=(--optimizer adam_sage --lr 2e-3 --sage-beta0 0.4) ;;
adam) optimizer_flags=(--optimizer adam --lr 7e-4) ;;
*) fail "OPTIMIZER=$OPTIMIZER: must be adam_sage or adam" ;;
esac

BIN=$WORKDIR/data-bin/wmt16_en_de
SAVE_DIR=$WORKDIR/checkpoints/wmt16_$OPTIMIZER
[[ -f $BIN/dict.en.txt && -f $BIN/dict.de.txt ]] ||
    fail "$BIN has no binarized data; run recipes/wmt16_en_de/prepare.sh $WORKDIR first"

TOKENS_PER_UPDATE=32768
MAX_TOKENS=4096
gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())') ||
    fail "$PYTHON cannot import torch; set PYTHON to the interpreter with the project installed"
devices=$((gpus > 0 ? gpus : 1))
update_freq=$(((TOKENS_PER_UPDATE + MAX_TOKENS * devices / 2) / (MAX_TOKENS * devices)))
update_freq=$((update_freq > 0 ? update_freq : 1))
precision_flags=()
[[ $gpus -eq 0 ]] || precision_flags=(--fp16)
log "$gpus GPU(s): --max-tokens $MAX_TOKENS --update-freq $update_freq ${precision_flags[*]}"

command=(
    "$PYTHON" "$RECIPES_DIR/quiet.py" fairseq_cli.train "$BIN" --user-dir "$REPO_ROOT/fairseq_sage"
    --source-lang en --target-lang de
    --arch transformer_wmt_en_de --share-all-embeddings
    "${optimizer_flags[@]}" --adam-betas '(0.9, 0.98)' --clip-norm 0.0
    --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
    --dropout 0.1 --weight-decay 0.0
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --max-tokens "$MAX_TOKENS" --update-freq "$update_freq" "${precision_flags[@]}"
    --max-epoch "$MAX_EPOCH"
    --save-dir "$SAVE_DIR" --update-epoch-batch-itr True --log-format simple --log-interval 100
    "$@"
)
train_once "$SAVE_DIR" checkpoint_last.pt "${command[@]}"
