#!/usr/bin/env bash
# The Multi30k De->En quickstart: prepare the data, train the same small transformer with Adam
# and with Adam-SAGE on the same update budget, evaluate both on test2016 and test2017, and
# print a side-by-side table (also saved as WORKDIR/results.md and WORKDIR/results.json).
#
# Usage: bash recipes/multi30k/run.sh [--data DIR] [WORKDIR] [-- FAIRSEQ_TRAIN_FLAGS...]
#   --data DIR  folder with Multi30k's raw {train,val,test_2016_flickr,test_2017_flickr}.{de,en}.gz
#               (default: ../shared/data/multi30k next to the repository when present, else
#               download them)
#   WORKDIR     where everything is written (default: runs/multi30k in the repository)
#   flags after -- are appended to both fairseq-train commands
#
# Environment: OPTIMIZERS (default "adam adam_sage"), PARALLEL (1, the default: the optimizers'
# runs at the same time, each with nproc/count threads; 0: one after the other, each with all
# cores), and the settings of prepare.sh and train.sh (MAX_TRAIN_LINES, SPM_VOCAB_SIZE,
# MAX_UPDATE, MAX_TOKENS, LR, SAGE_BETA0, ...).
# Finished steps are skipped when run again; an interrupted step is redone. A second quickstart in
# the same WORKDIR while one runs stops at once with one line.
set -euo pipefail
RECIPE=multi30k
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
source "$RECIPES_DIR/multi30k/args.sh"
parse_data_and_workdir run.sh "$@"

# One quickstart per WORKDIR: two would write the same files (one dying on the other's renamed
# .partial files). The lock is held on WORKDIR/.quickstart.lock for the whole run, by this shell and
# every step it starts (they inherit the descriptor); the file names the holder's pid.
LOCK=$WORKDIR/.quickstart.lock
exec {lock_fd}>>"$LOCK"
flock -n "$lock_fd" ||
    fail "WORKDIR $WORKDIR is in use by another quickstart (pid $(cat "$LOCK")); wait for it or pick another folder"
echo $$ >"$LOCK"
read -r -a optimizers <<<"${OPTIMIZERS:-adam adam_sage}"
[[ ${#optimizers[@]} -gt 0 ]] || fail "OPTIMIZERS is empty; use e.g. OPTIMIZERS=\"adam adam_sage\""

started=$SECONDS
bash "$RECIPES_DIR/multi30k/prepare.sh" ${DATA:+--data "$DATA"} "$WORKDIR"

# train_and_evaluate OPTIMIZER: train.sh, then evaluate.sh on both test sets.
train_and_evaluate() {
    bash "$RECIPES_DIR/multi30k/train.sh" "$WORKDIR" "$1" "${TRAIN_FLAGS[@]}" &&
        bash "$RECIPES_DIR/multi30k/evaluate.sh" "$WORKDIR" "$1"
}

PARALLEL=${PARALLEL:-1}
[[ $PARALLEL == 0 || $PARALLEL == 1 ]] || fail "PARALLEL=$PARALLEL: must be 1 (runs at the same time) or 0"
if [[ $PARALLEL == 1 ]]; then
    # one process per optimizer, the cores shared out between them (one thread each on 2 cores)
    threads=$((WORKERS / ${#optimizers[@]}))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((threads > 0 ? threads : 1))} NO_PROGRESS=1 PROGRESS_LINE=1
    jobs=() progress=()
    for optimizer in "${optimizers[@]}"; do
        train_and_evaluate "$optimizer" &
        jobs+=($!)
        progress+=("$optimizer=$WORKDIR/checkpoints/$optimizer/train.log:${MAX_UPDATE:-700}")
    done
    PYTHONPATH="$REPO_ROOT" "$PYTHON" "$RECIPES_DIR/progress.py" "${progress[@]}" &
    watcher=$!
    failed=0
    for job in "${jobs[@]}"; do
        wait "$job" || failed=1
    done
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" || true
    [[ $failed == 0 ]] || exit 1  # the failed step printed its error
else
    for optimizer in "${optimizers[@]}"; do
        train_and_evaluate "$optimizer"
    done
fi
PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$RECIPES_DIR/multi30k/report.py" "$WORKDIR" "${optimizers[@]}"
log "finished in $((SECONDS - started)) s"
