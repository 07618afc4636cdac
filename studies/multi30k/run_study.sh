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
#   --data DIR  Multi30k's raw .gz files (default: ../shared/data/multi30k when present, else download)
#   --plan      record the settings and write the report (results pending) without running anything
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
source "$STUDY_DIR/../../recipes/common.sh"
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

# parse_arguments ARGS...: set DATA, PLAN_ONLY, WORKDIR and USER_TRAIN_FLAGS from the command line.
parse_arguments() {
    local workdir=""
    DATA=""
    PLAN_ONLY=0
    USER_TRAIN_FLAGS=()
    while [[ $# -gt 0 ]]; do
        case $1 in
        --data)
            [[ $# -ge 2 && -d $2 ]] || fail "--data ${2:-}: no such folder; give the folder of Multi30k's .gz files"
            DATA="$(cd "$2" && pwd)"
            shift 2
            ;;
        --plan) PLAN_ONLY=1 && shift ;;
        --)
            shift
            USER_TRAIN_FLAGS=("$@")
            break
            ;;
        -h | --help) echo "$USAGE" && exit 0 ;;
        -*) fail "unknown option $1; $USAGE" ;;
        *)
            [[ -z $workdir ]] || fail "two work folders given ($workdir and $1); give one WORKDIR"
            workdir=$1
            shift
            ;;
        esac
    done
    mkdir -p "${workdir:-$REPO_ROOT/runs/multi30k_study}"
    WORKDIR="$(cd "${workdir:-$REPO_ROOT/runs/multi30k_study}" && pwd)"
}

# apply_defaults: give every unset setting its default; OVERRIDDEN lists those set by the caller.
apply_defaults() {
    local name
    OVERRIDDEN=""
    for name in "${!DEFAULTS[@]}"; do
        if [[ -n ${!name:-} ]]; then
            OVERRIDDEN+="$name "
        else
            printf -v "$name" '%s' "${DEFAULTS[$name]}"
        fi
    done
    OVERRIDDEN=$(tr ' ' '\n' <<<"$OVERRIDDEN" | sort | xargs)
    RESULTS_DOC=${RESULTS_DOC:-$REPO_ROOT/docs/results.md}
    TRAIN_FLAGS=""
    [[ ${#USER_TRAIN_FLAGS[@]} -eq 0 ]] || TRAIN_FLAGS=$(printf '%q ' "${USER_TRAIN_FLAGS[@]}")
    TRAIN_FLAGS=${TRAIN_FLAGS% }
}

# require_numbers NAME PATTERN WHAT: fail unless the variable NAME is a list of words matching PATTERN.
require_numbers() {
    local name=$1 pattern=$2 what=$3 word
    [[ -n ${!name// /} ]] || fail "$name is empty; give one or more $what"
    for word in ${!name}; do
        [[ $word =~ $pattern ]] || fail "$name: '$word' is not $what"
    done
}

check_settings() {
    local setting
    require_numbers ADAM_LRS '^[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?$' "a learning rate like 2e-3"
    require_numbers SAGE_LRS '^[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?$' "a learning rate like 2e-3"
    require_numbers SAGE_BETA0S '^0?\.[0-9]*[1-9][0-9]*$' "a beta0 in (0, 1) like 0.8"
    require_numbers SEEDS '^[1-9][0-9]*$' "a positive integer seed"
    [[ $(tr ' ' '\n' <<<"$SEEDS" | grep -c .) -eq $(tr ' ' '\n' <<<"$SEEDS" | grep . | sort -u | wc -l) ]] ||
        fail "SEEDS=$SEEDS: a seed appears twice"
    for setting in MAX_UPDATE WARMUP_UPDATES MAX_TOKENS SAVE_INTERVAL_UPDATES LOG_INTERVAL SPM_VOCAB_SIZE \
        PRUNE_BATCHES; do
        require_positive_integer "$setting"
    done
    for setting in MAX_TRAIN_LINES MAX_TEST_LINES; do
        [[ ${!setting} == all ]] || require_positive_integer "$setting"
    done
    [[ $PRUNE_LEVELS =~ ^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*$ ]] ||
        fail "PRUNE_LEVELS=$PRUNE_LEVELS: give comma-separated percentages like 0,10,20"
    [[ $PRUNE_SUBSET =~ ^(valid|test|test1)$ ]] ||
        fail "PRUNE_SUBSET=$PRUNE_SUBSET: must be valid, test (test2016) or test1 (test2017)"
    [[ -d $(dirname "$RESULTS_DOC") ]] || fail "RESULTS_DOC=$RESULTS_DOC: its folder does not exist"
}

# settings_file: the study's settings as KEY=VALUE lines (WORKDIR/study.env).
settings_file() {
    local name
    for name in "${FIXED_SETTINGS[@]}" "${PLAN_SETTINGS[@]}"; do
        printf '%s=%s\n' "$name" "${!name}"
    done
    printf 'DATA=%s\nOVERRIDDEN=%s\n' "$DATA" "$OVERRIDDEN"
}

# record_settings: stop if WORKDIR holds runs made with other fixed settings, else write study.env
# (unless it holds these settings already).
record_settings() {
    local file=$WORKDIR/study.env name previous
    if [[ -f $file ]]; then
        for name in "${FIXED_SETTINGS[@]}"; do
            previous=$(grep -m1 "^$name=" "$file" | cut -d= -f2-) ||
                fail "$file has no $name; delete $WORKDIR or use another WORKDIR"
            [[ $previous == "${!name}" ]] ||
                fail "$WORKDIR was run with $name='$previous', now '${!name}';" \
                    "use the same settings or another WORKDIR"
        done
    fi
    settings_file >"$file.partial"
    if cmp -s "$file.partial" "$file"; then
        rm "$file.partial"
    else
        mv "$file.partial" "$file"
    fi
}

# study_python MODULE ARGS...: run `python -m studies.multi30k.MODULE ARGS...` from the repository.
study_python() {
    local module=$1
    shift
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m "studies.multi30k.$module" "$@"
}

# quietly OUTPUT COMMAND...: run COMMAND (no input) with its output in the file OUTPUT; if it fails,
# show the end of OUTPUT and stop.
quietly() {
    local output=$1
    shift
    mkdir -p "$(dirname "$output")"
    if ! "$@" </dev/null >"$output" 2>&1; then
        tail -n 20 "$output" >&2
        fail "the step above failed; the end of its output is above, all of it in $output"
    fi
}

# digest FILE: the md5 of FILE's content.
digest() {
    md5sum <"$1" | cut -d' ' -f1
}

# use_run NAME OPTIMIZER LR BETA0 SEED: set the RUN_* variables and lay out WORKDIR/runs/NAME as a
# train.sh WORKDIR whose data-bin, text and spm are the prepared ones (BETA0 "-" for Adam).
use_run() {
    RUN_NAME=$1 RUN_OPTIMIZER=$2 RUN_LR=$3 RUN_BETA0=${4#-} RUN_SEED=$5
    RUN_DIR=$WORKDIR/runs/$RUN_NAME
    RUN_CHECKPOINT=$RUN_DIR/checkpoints/$RUN_OPTIMIZER/checkpoint_best.pt
    STEPS_DIR=$RUN_DIR/.steps
    mkdir -p "$RUN_DIR"
    local part
    for part in data-bin text spm; do
        [[ -L $RUN_DIR/$part ]] || ln -s "../../data/$part" "$RUN_DIR/$part"
    done
    # train.sh reads the settings of the binarized data from prepare.sh's marker
    mkdir -p "$STEPS_DIR"
    [[ -L $STEPS_DIR/binarize.done ]] || ln -s "../../../data/.steps/binarize.done" "$STEPS_DIR/binarize.done"
}

train_run() {
    quietly "$RUN_DIR/logs/train.out" env LR="$RUN_LR" SEED="$RUN_SEED" ${RUN_BETA0:+SAGE_BETA0="$RUN_BETA0"} \
        bash "$RECIPES_DIR/multi30k/train.sh" "$RUN_DIR" "$RUN_OPTIMIZER" \
        --update-epoch-batch-itr True --save-interval-updates "$SAVE_INTERVAL_UPDATES" \
        --keep-interval-updates 1 --log-interval "$LOG_INTERVAL" "${USER_TRAIN_FLAGS[@]}"
    # the mid-epoch checkpoint kept for resuming is not needed once the run finished
    rm -f "$RUN_DIR/checkpoints/$RUN_OPTIMIZER"/checkpoint_[0-9]*_[0-9]*.pt
}

# score_sets LOG SET...: BLEU of the run's checkpoint_best.pt on the sets (recipes/multi30k/evaluate.sh),
# scored again even where evaluate.sh would find the scores up to date: the step's marker decides.
score_sets() {
    local log_file=$1 name
    shift
    for name in "$@"; do
        rm -f "$RUN_DIR/eval/$RUN_OPTIMIZER/$name.sacrebleu.json"
    done
    quietly "$log_file" bash "$RECIPES_DIR/multi30k/evaluate.sh" "$RUN_DIR" "$RUN_OPTIMIZER" "$@"
}

score_validation() {
    score_sets "$RUN_DIR/logs/valid.out" valid
}

score_tests() {
    score_sets "$RUN_DIR/logs/test.out" test2016 test2017
}

prune_run() {
    quietly "$WORKDIR/analysis/$RUN_OPTIMIZER.out" env PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
        "$PYTHON" -m fairseq_sage.analysis "$WORKDIR/data/data-bin" --path "$RUN_CHECKPOINT" --cpu \
        --prune-levels "$PRUNE_LEVELS" --gen-subset "$PRUNE_SUBSET" --num-batches "$PRUNE_BATCHES" \
        --post-process sentencepiece --output-dir "$WORKDIR/analysis/$RUN_OPTIMIZER"
}

write_report() {
    quietly "$WORKDIR/report.out" study_python plots "$WORKDIR"
    study_python report "$WORKDIR" --doc "$RESULTS_DOC"
}

# report_inputs_digest: one digest of every file the figures and the report are made from.
report_inputs_digest() {
    (
        cd "$WORKDIR"
        shopt -s nullglob
        md5sum study.env selection.json runs/*/checkpoints/*/train.log runs/*/eval/*/*.sacrebleu.json \
            analysis/*/*.csv | md5sum | cut -d' ' -f1
    )
}

parse_arguments "$@"
apply_defaults
check_settings
export PYTHON WORKERS MAX_UPDATE WARMUP_UPDATES MAX_TOKENS MAX_TRAIN_LINES MAX_TEST_LINES SPM_VOCAB_SIZE
record_settings
if [[ $PLAN_ONLY == 1 ]]; then
    study_python report "$WORKDIR" --doc "$RESULTS_DOC"
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
    pruning_settings="levels=$PRUNE_LEVELS subset=$PRUNE_SUBSET batches=$PRUNE_BATCHES"
    run_step "$optimizer.pruning" prune_run "$name checkpoint md5 $(digest "$RUN_CHECKPOINT") $pruning_settings"
done <<<"$pruned"

STEPS_DIR=$WORKDIR/.steps
run_step report write_report "inputs md5 $(report_inputs_digest) doc=$RESULTS_DOC"
log "finished in $((SECONDS - started)) s; report: $WORKDIR/results.md and $RESULTS_DOC"
