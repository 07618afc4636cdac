#!/usr/bin/env bash
# IWSLT'14 De->En end to end: prepare the data, train, evaluate.
#
# Usage: bash recipes/iwslt14_de_en/run.sh WORKDIR [FAIRSEQ_TRAIN_FLAGS...]
#   extra flags go to fairseq-train; OPTIMIZER=adam_sage (default) or adam, and the other
#   settings of prepare.sh, train.sh and evaluate.sh, are read from the environment.
# Finished steps are skipped when run again.
set -euo pipefail
RECIPE=iwslt14_de_en
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
[[ $# -ge 1 && $1 != -* ]] || {
    echo "usage: bash recipes/iwslt14_de_en/run.sh WORKDIR [FAIRSEQ_TRAIN_FLAGS...]" >&2
    exit 2
}
workdir=$1
shift
bash "$RECIPES_DIR/iwslt14_de_en/prepare.sh" "$workdir"
bash "$RECIPES_DIR/iwslt14_de_en/train.sh" "$workdir" "$@"
bash "$RECIPES_DIR/iwslt14_de_en/evaluate.sh" "$workdir"
