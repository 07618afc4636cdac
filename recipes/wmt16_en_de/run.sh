#!/usr/bin/env bash
# WMT'16 En->De end to end: prepare the data, train, average the last checkpoints, evaluate.
#
# Usage: bash recipes/wmt16_en_de/run.sh WORKDIR [FAIRSEQ_TRAIN_FLAGS...]
#   extra flags go to fairseq-train; OPTIMIZER=adam_sage (default) or adam, and the other
#   settings of prepare.sh, train.sh and evaluate.sh, are read from the environment.
# Finished steps are skipped when run again.
set -euo pipefail
RECIPE=wmt16_en_de
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
[[ $# -ge 1 && $1 != -* ]] || {
    echo "usage: bash recipes/wmt16_en_de/run.sh WORKDIR [FAIRSEQ_TRAIN_FLAGS...]" >&2
    exit 2
}
workdir=$1
shift
bash "$RECIPES_DIR/wmt16_en_de/prepare.sh" "$workdir"
bash "$RECIPES_DIR/wmt16_en_de/train.sh" "$workdir" "$@"
bash "$RECIPES_DIR/wmt16_en_de/evaluate.sh" "$workdir"
