# Shell functions of the Multi30k studies (run_study.sh and converged.sh), sourced after
# recipes/common.sh. They read the study's settings from the caller's variables: WORKDIR, PYTHON,
# DEFAULTS, FIXED_SETTINGS, PLAN_SETTINGS, DATA, USER_TRAIN_FLAGS, STUDY_TRAIN_FLAGS, PRUNE_*.

# parse_arguments DEFAULT_WORKDIR ARGS...: set DATA, PLAN_ONLY, FOREGROUND, WORKDIR and USER_TRAIN_FLAGS
# from the command line (USAGE: the caller's usage line).
parse_arguments() {
    local default_workdir=$1 workdir=""
    shift
    DATA=""
    PLAN_ONLY=0
    FOREGROUND=0
    USER_TRAIN_FLAGS=()
    while [[ $# -gt 0 ]]; do
        case $1 in
        --data)
            [[ $# -ge 2 && -d $2 ]] || fail "--data ${2:-}: no such folder; give the folder of Multi30k's .gz files"
            DATA="$(cd "$2" && pwd)"
            shift 2
            ;;
        --plan) PLAN_ONLY=1 && shift ;;
        --foreground) FOREGROUND=1 && shift ;;
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
    mkdir -p "${workdir:-$default_workdir}"
    WORKDIR="$(cd "${workdir:-$default_workdir}" && pwd)"
}

# apply_defaults: give every unset setting its default; OVERRIDDEN lists those set by the caller;
# PLAN_DOC is --doc where the caller gave RESULTS_DOC (what --plan writes besides WORKDIR/results.md).
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
    PLAN_DOC=${RESULTS_DOC:+--doc}  # --plan writes RESULTS_DOC only where it is given (never a finished docs/results.md)
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

# check_grid_settings: validate the grid, seed, data and pruning settings shared by both studies.
check_grid_settings() {
    local setting
    require_numbers ADAM_LRS '^[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?$' "a learning rate like 2e-3"
    require_numbers SAGE_LRS '^[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?$' "a learning rate like 2e-3"
    require_numbers SAGE_BETA0S '^0?\.[0-9]*[1-9][0-9]*$' "a beta0 in (0, 1) like 0.8"
    require_numbers SEEDS '^[1-9][0-9]*$' "a positive integer seed"
    [[ $(tr ' ' '\n' <<<"$SEEDS" | grep -c .) -eq $(tr ' ' '\n' <<<"$SEEDS" | grep . | sort -u | wc -l) ]] ||
        fail "SEEDS=$SEEDS: a seed appears twice"
    for setting in SPM_VOCAB_SIZE PRUNE_BATCHES; do
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

# train_run: train the run of use_run with the study's STUDY_TRAIN_FLAGS and the caller's flags.
train_run() {
    quietly "$RUN_DIR/logs/train.out" env LR="$RUN_LR" SEED="$RUN_SEED" ${RUN_BETA0:+SAGE_BETA0="$RUN_BETA0"} \
        bash "$RECIPES_DIR/multi30k/train.sh" "$RUN_DIR" "$RUN_OPTIMIZER" \
        "${STUDY_TRAIN_FLAGS[@]}" "${USER_TRAIN_FLAGS[@]}"
    # the mid-epoch checkpoint kept for resuming is not needed once the run finished
    rm -f "$RUN_DIR/checkpoints/$RUN_OPTIMIZER"/checkpoint_[0-9]*_[0-9]*.pt
}

# eval_dir: where evaluate.sh scores the run's EVAL_MODEL (default checkpoint_best).
eval_dir() {
    if [[ ${EVAL_MODEL:-checkpoint_best} == checkpoint_best ]]; then
        echo "$RUN_DIR/eval/$RUN_OPTIMIZER"
    else
        echo "$RUN_DIR/eval/$RUN_OPTIMIZER/$EVAL_MODEL"
    fi
}

# score_sets LOG SET...: BLEU of the run's EVAL_MODEL (default checkpoint_best.pt) on the sets (recipes/multi30k/evaluate.sh),
# scored again even where evaluate.sh would find the scores up to date: the step's marker decides.
score_sets() {
    local log_file=$1 name
    shift
    for name in "$@"; do
        rm -f "$(eval_dir)/$name.sacrebleu.json"
    done
    quietly "$log_file" bash "$RECIPES_DIR/multi30k/evaluate.sh" "$RUN_DIR" "$RUN_OPTIMIZER" "$@"
}

# prune_run: the sensitivity analysis and pruning curve of RUN_CHECKPOINT (python -m fairseq_sage.analysis)
# in the folder PRUNE_DIR, its output in PRUNE_DIR.out.
prune_run() {
    quietly "$PRUNE_DIR.out" env PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
        "$PYTHON" -m fairseq_sage.analysis "$WORKDIR/data/data-bin" --path "$RUN_CHECKPOINT" --cpu \
        --prune-levels "$PRUNE_LEVELS" --gen-subset "$PRUNE_SUBSET" --num-batches "$PRUNE_BATCHES" \
        --post-process sentencepiece --output-dir "$PRUNE_DIR"
}

# report_inputs_digest: one digest of every file the figures and the report are made from.
report_inputs_digest() {
    (
        cd "$WORKDIR"
        shopt -s nullglob
        md5sum study.env ./*.json runs/*/checkpoints/*/train.log runs/*/eval/*/*.json \
            runs/*/eval/*/*/*.json paired/*.json analysis/*/*.csv runs/*/analysis/*.csv | md5sum | cut -d' ' -f1
    )
}

# share_cores: with JOBS > 1 and no OMP_NUM_THREADS, each of the JOBS runs at once gets cores / JOBS
# threads (OMP_NUM_THREADS, exported) and ALONE_THREADS, every core, goes to run_all's leftover
# runs; else ALONE_THREADS is empty.
share_cores() {
    ALONE_THREADS=""
    if [[ $JOBS -gt 1 && -z ${OMP_NUM_THREADS:-} ]]; then
        local count
        count=$(cores)
        export OMP_NUM_THREADS=$((count / JOBS > 0 ? count / JOBS : 1))
        ALONE_THREADS=$count
    fi
}

# run_all STAGE: process_run STAGE LINE for each `NAME OPTIMIZER LR BETA0 SEED` line of stdin, JOBS
# at a time (process_run and run_finished are the caller's). The runs that run_finished says are
# finished go first, one at a time (their steps are skipped). With ALONE_THREADS set, the runs left
# over after the last full round of JOBS of the others (fewer than JOBS) first wait for every
# earlier run to end, then train with ALONE_THREADS / their number threads each instead of leaving
# cores idle (alone on 2 cores, a run trains about 1.8x faster with 2 threads than with 1).
run_all() {
    local stage=$1 line lines=() pids=() failed=0 i threads
    while read -r line; do
        [[ -n $line ]] || continue
        # shellcheck disable=SC2086
        if run_finished "$stage" $line; then
            (process_run "$stage" $line) </dev/null || failed=1
        else
            lines+=("$line")
        fi
    done
    local full=$((${#lines[@]} / JOBS * JOBS)) pid
    local leftover=$((${#lines[@]} - full))
    threads=$((leftover > 0 && ${ALONE_THREADS:-0} / leftover > 0 ? ${ALONE_THREADS:-0} / leftover : 1))
    for i in "${!lines[@]}"; do
        while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do
            wait -n || true
        done
        if [[ -n ${ALONE_THREADS:-} && $i -ge $full ]]; then
            while [[ $i == "$full" && -n $(jobs -rp) ]]; do
                wait -n || true
            done
            log "${lines[$i]%% *}: one of the last $leftover of the $stage, $threads threads"
            # shellcheck disable=SC2086
            (export OMP_NUM_THREADS=$threads && process_run "$stage" ${lines[$i]}) &
        else
            # shellcheck disable=SC2086
            (process_run "$stage" ${lines[$i]}) &
        fi
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    [[ $failed == 0 ]] || fail "a run of the $stage failed; its error is above, its logs in $WORKDIR/runs/RUN/logs"
}
