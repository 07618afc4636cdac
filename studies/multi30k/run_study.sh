#!/usr/bin/env bash
# The Multi30k De->En study of Adam against Adam-SAGE (docs/results.md), resumable:
#   1. prepare the data once (recipes/multi30k/prepare.sh);
#   2. the grid: Adam at each lr of ADAM_LRS, Adam-SAGE at each lr of SAGE_LRS and beta0 of
#      SAGE_BETA0S, all with the first seed of SEEDS; each run is scored by validation BLEU;
#   3. each optimizer's best setting (highest validation BLEU, ties: lower validation loss) is
#      trained with the other seeds of SEEDS (the grid run is its first seed);
#   4. those runs are scored on test2016 and test2017 (recipes/multi30k/evaluate.sh);
#   5. the pruning curve of each optimizer's best first-seed model (python -m fairseq_sage.analysis);
#   6. figures (studies/multi30k/plots.py) and the report (studies/multi30k/report.py), written to
#      WORKDIR/results.md and RESULTS_DOC.
# Every step is skipped when its marker says it finished with the same inputs, so running the
# script again picks up where it stopped; an interrupted training run resumes from its last
# checkpoint (all runs pass --update-epoch-batch-itr True, so the resumed run is the run that was
# interrupted). Runs are sequential. To redo a run from scratch, delete its folder WORKDIR/runs/RUN.
#
# Usage: bash studies/multi30k/run_study.sh [--data DIR] [--plan] [WORKDIR] [-- FAIRSEQ_TRAIN_FLAGS...]
#        bash studies/multi30k/run_study.sh --converged [...]   the study at convergence (converged.sh)
#   --data DIR  Multi30k's raw .gz files (default: ../shared/data/multi30k when present, else download)
#   --plan      record the settings and write the report (results pending) without running anything:
#               WORKDIR/results.md, and RESULTS_DOC only where it is given (docs/results.md is left as it is)
#   WORKDIR     default runs/multi30k_study in the repository
#   flags after -- are appended to every fairseq-train command (e.g. a smaller model)
#
# Environment (defaults in brackets):
#   ADAM_LRS [1e-3 2e-3 4e-3 8e-3]   SAGE_LRS [2e-3 5e-3 1e-2 2e-2]   SAGE_BETA0S [0.6 0.8 0.9]   SEEDS [1 2 3]
#   MAX_UPDATE [600]  WARMUP_UPDATES [200]  MAX_TOKENS [2048]  updates, warm-up and batch size of a run
#   SAVE_INTERVAL_UPDATES [100]  checkpoint and validation every N updates (and at each epoch's end)
#   LOG_INTERVAL [25]            train loss and SAGE statistics every N updates
#   MAX_TRAIN_LINES [all]  MAX_TEST_LINES [all]  SPM_VOCAB_SIZE [8000]   data (prepare.sh)
#   PRUNE_LEVELS [0,10,20,30,40]  PRUNE_SUBSET [test, i.e. test2016]  PRUNE_BATCHES [8]
#   RESULTS_DOC [docs/results.md]  the report; its figures go to figures/multi30k/ beside it
#   PYTHON, WORKERS                see recipes/common.sh
# The data, model and schedule settings cannot change within one WORKDIR (the script stops and says
# which differs); the grid, the seeds and the pruning settings can: only the missing steps run.
# On a machine busy with other jobs, OMP_NUM_THREADS=1 can be much faster than torch's two threads.
#
# Writes, under WORKDIR: study.env (the settings), data/ (prepare.sh), runs/RUN/ (one train.sh
# WORKDIR per run: checkpoints/, eval/ with the sacreBLEU JSON files, logs/ with each step's output),
# selection.json, analysis/OPTIMIZER/ (sensitivity and pruning CSV/PNG), figures/*.png, results/
# (runs.csv, runs.json, summary.json) and results.md; RESULTS_DOC gets the same report with the
# figures copied to figures/multi30k/ beside it.
set -euo pipefail
RECIPE=multi30k-study
STUDY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ ${1:-} == --converged ]]; then
    shift
    exec bash "$STUDY_DIR/converged.sh" "$@"
fi
source "$STUDY_DIR/../../recipes/common.sh"
source "$STUDY_DIR/lib.sh"
USAGE="usage: bash studies/multi30k/run_study.sh [--data DIR] [--plan] [WORKDIR] [-- FAIRSEQ_TRAIN_FLAGS...]"

# Settings whose change would make the finished runs of a WORKDIR incomparable with new ones.
FIXED_SETTINGS=(MAX_TRAIN_LINES MAX_TEST_LINES SPM_VOCAB_SIZE MAX_UPDATE WARMUP_UPDATES MAX_TOKENS
    SAVE_INTERVAL_UPDATES LOG_INTERVAL TRAIN_FLAGS)
PLAN_SETTINGS=(ADAM_LRS SAGE_LRS SAGE_BETA0S SEEDS PRUNE_LEVELS PRUNE_SUBSET PRUNE_BATCHES)
declare -A DEFAULTS=(
    [ADAM_LRS]="1e-3 2e-3 4e-3 8e-3" [SAGE_LRS]="2e-3 5e-3 1e-2 2e-2" [SAGE_BETA0S]="0.6 0.8 0.9"
    [SEEDS]="1 2 3" [MAX_UPDATE]=600 [WARMUP_UPDATES]=200 [MAX_TOKENS]=2048
    [SAVE_INTERVAL_UPDATES]=100 [LOG_INTERVAL]=25 [MAX_TRAIN_LINES]=all [MAX_TEST_LINES]=all
    [SPM_VOCAB_SIZE]=8000 [PRUNE_LEVELS]=0,10,20,30,40 [PRUNE_SUBSET]=test [PRUNE_BATCHES]=8
)

check_settings() {
    local setting
    check_grid_settings
    for setting in MAX_UPDATE WARMUP_UPDATES MAX_TOKENS SAVE_INTERVAL_UPDATES LOG_INTERVAL; do
        require_positive_integer "$setting"
    done
}

score_validation() {
    score_sets "$RUN_DIR/logs/valid.out" valid
}

score_tests() {
    score_sets "$RUN_DIR/logs/test.out" test2016 test2017
}

write_report() {
    quietly "$WORKDIR/report.out" study_python plots "$WORKDIR"
    study_python report "$WORKDIR" --doc "$RESULTS_DOC"
}



parse_arguments "$REPO_ROOT/runs/multi30k_study" "$@"
apply_defaults
check_settings
STUDY_TRAIN_FLAGS=(--update-epoch-batch-itr True --save-interval-updates "$SAVE_INTERVAL_UPDATES"
    --keep-interval-updates 1 --log-interval "$LOG_INTERVAL")
export PYTHON WORKERS MAX_UPDATE WARMUP_UPDATES MAX_TOKENS MAX_TRAIN_LINES MAX_TEST_LINES SPM_VOCAB_SIZE
record_settings
if [[ $PLAN_ONLY == 1 ]]; then
    study_python report "$WORKDIR" ${PLAN_DOC:+"$PLAN_DOC" "$RESULTS_DOC"}
    exit 0
fi
started=$SECONDS

quietly "$WORKDIR/data/prepare.out" bash "$RECIPES_DIR/multi30k/prepare.sh" ${DATA:+--data "$DATA"} "$WORKDIR/data"
grep '^\[multi30k\]' "$WORKDIR/data/prepare.out" | sed "s/^\[multi30k\]/[$RECIPE] prepare:/"

grid=$(study_python plan grid "$WORKDIR")
while read -r name optimizer lr beta0 seed; do
    use_run "$name" "$optimizer" "$lr" "$beta0" "$seed"
    run_step "$name.train" train_run "lr=$lr beta0=$beta0 seed=$seed"
    run_step "$name.valid" score_validation "checkpoint md5 $(digest "$RUN_CHECKPOINT")"
done <<<"$grid"

final=$(study_python plan final "$WORKDIR")
while read -r name optimizer lr beta0 seed; do
    use_run "$name" "$optimizer" "$lr" "$beta0" "$seed"
    run_step "$name.train" train_run "lr=$lr beta0=$beta0 seed=$seed"
    run_step "$name.test" score_tests "checkpoint md5 $(digest "$RUN_CHECKPOINT")"
done <<<"$final"

pruned=$(study_python plan pruning "$WORKDIR")
while read -r name optimizer lr beta0 seed; do
    use_run "$name" "$optimizer" "$lr" "$beta0" "$seed"
    STEPS_DIR=$WORKDIR/.steps
    PRUNE_DIR=$WORKDIR/analysis/$optimizer
    pruning_settings="levels=$PRUNE_LEVELS subset=$PRUNE_SUBSET batches=$PRUNE_BATCHES"
    run_step "$optimizer.pruning" prune_run "$name checkpoint md5 $(digest "$RUN_CHECKPOINT") $pruning_settings"
done <<<"$pruned"

STEPS_DIR=$WORKDIR/.steps
run_step report write_report "inputs md5 $(report_inputs_digest) doc=$RESULTS_DOC"
log "finished in $((SECONDS - started)) s; report: $WORKDIR/results.md and $RESULTS_DOC"
