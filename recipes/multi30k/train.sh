#!/usr/bin/env bash
# Train the quickstart's small transformer on Multi30k De->En with one optimizer.
#
# Usage: bash recipes/multi30k/train.sh WORKDIR OPTIMIZER [FAIRSEQ_TRAIN_FLAGS...]
#   OPTIMIZER  adam | adam_sage
#   extra flags are appended to the fairseq-train command (the last occurrence of a flag wins)
#
# Both optimizers train the same model (2+2 layers, 128 dim, 4 heads, ffn 512, shared
# embeddings, dropout 0.2) on the same fixed budget of MAX_UPDATE updates of MAX_TOKENS tokens,
# inverse-sqrt schedule with WARMUP_UPDATES warm-up, label smoothing 0.1.
#
# Environment:
#   MAX_UPDATE      update budget, the same for both optimizers (default 700)
#   MAX_TOKENS      tokens per batch (default 2048)
#   WARMUP_UPDATES  linear warm-up (default 200)
#   LR              peak learning rate (default 4e-3 for adam, 5e-3 for adam_sage: each one's best
#                   on the validation set in the Multi30k study, docs/results.md)
#   SAGE_BETA0      adam_sage's beta0 (default 0.8, the study's best)
#   SEED            random seed (default 1)
#   EPOCH_CHECKPOINTS  1: also keep a checkpoint at each epoch's end (checkpointE.pt; default 0)
#   PYTHON          see recipes/common.sh
#
# Writes WORKDIR/checkpoints/OPTIMIZER/ (checkpoint_best.pt, checkpoint_last.pt, train.log).
# A finished run with the same command is skipped; an interrupted one resumes from
# checkpoint_last.pt.
set -euo pipefail
RECIPE=multi30k
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

check_arguments 2 "bash recipes/multi30k/train.sh WORKDIR adam|adam_sage [FAIRSEQ_TRAIN_FLAGS...]" "$@"
existing_workdir "$1" "run recipes/multi30k/prepare.sh first"
OPTIMIZER=$2
shift 2
MAX_UPDATE=${MAX_UPDATE:-700}
MAX_TOKENS=${MAX_TOKENS:-2048}
WARMUP_UPDATES=${WARMUP_UPDATES:-200}
SAGE_BETA0=${SAGE_BETA0:-0.8}
SEED=${SEED:-1}
epoch_checkpoints=(--no-epoch-checkpoints)
[[ ${EPOCH_CHECKPOINTS:-0} == 0 ]] || epoch_checkpoints=()
require_positive_integer MAX_UPDATE
require_positive_integer MAX_TOKENS
require_positive_integer WARMUP_UPDATES

case $OPTIMIZER in
adam) optimizer_flags=(--optimizer adam --lr "${LR:-4e-3}") ;;
adam_sage) optimizer_flags=(--optimizer adam_sage --lr "${LR:-5e-3}" --sage-beta0 "$SAGE_BETA0") ;;
*) fail "OPTIMIZER $OPTIMIZER: must be adam or adam_sage" ;;
esac

BIN=$WORKDIR/data-bin
SAVE_DIR=$WORKDIR/checkpoints/$OPTIMIZER
# prepare.sh's marker of its last step records the settings the binarized data was made with;
# checkpoints trained on other data must not be resumed or reused
DATA_MARKER=$WORKDIR/.steps/binarize.done
[[ -f $DATA_MARKER ]] || fail "$BIN has no binarized data; run recipes/multi30k/prepare.sh $WORKDIR first"
data_settings=$(cat "$DATA_MARKER")
if [[ -f $SAVE_DIR/data.settings && "$(cat "$SAVE_DIR/data.settings")" != "$data_settings" ]]; then
    fail "$SAVE_DIR was trained on data prepared with ($(cat "$SAVE_DIR/data.settings")), the data now is ($data_settings); delete $SAVE_DIR or use another WORKDIR"
fi
mkdir -p "$SAVE_DIR"
printf '%s\n' "$data_settings" >"$SAVE_DIR/data.settings"

command=(
    "$PYTHON" "$RECIPES_DIR/quiet.py" fairseq_cli.train "$BIN" --user-dir "$REPO_ROOT/fairseq_sage"
    --source-lang de --target-lang en
    --arch transformer --share-all-embeddings
    --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128
    --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
    --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.2
    "${optimizer_flags[@]}" --adam-betas '(0.9, 0.98)' --weight-decay 0.0001
    --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP_UPDATES" --warmup-init-lr 1e-07
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --max-tokens "$MAX_TOKENS" --max-update "$MAX_UPDATE" --seed "$SEED"
    --save-dir "$SAVE_DIR" "${epoch_checkpoints[@]}" --update-epoch-batch-itr True
    --log-format simple --log-interval 25
    "$@"
)
train_once "$SAVE_DIR" checkpoint_best.pt "${command[@]}"
