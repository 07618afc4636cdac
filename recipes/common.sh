# Shared helpers of the recipes' scripts. A script sets RECIPE, runs `set -euo pipefail`, then
# sources this file; prepare.sh calls `parse_workdir "$@"`, train.sh and evaluate.sh
# `check_arguments` and `existing_workdir`.
#
# Environment read here:
#   PYTHON          interpreter with this project's dependencies (default: python)
#   WORKERS         processes for tokenizing, BPE and fairseq-preprocess (default: the cores)
#   SUBWORD_METHOD  bpe (subword-nmt, default) or sentencepiece
#
# Every step runs through `run_step NAME FUNCTION [SETTINGS]`: a step whose marker
# STEPS_DIR/NAME.done exists (and records the same SETTINGS) is skipped; a step that did
# not finish has no marker and is run again. Steps write their outputs atomically
# (temporary file + rename).

RECIPES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$RECIPES_DIR")"
PYTHON="${PYTHON:-python}"

# cores: the CPU cores this process may use. GNU nproc reports OMP_NUM_THREADS (or OMP_THREAD_LIMIT)
# where one is set, which is a thread count, not the cores.
cores() {
    env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1
}

WORKERS="${WORKERS:-$(cores)}"
SUBWORD_METHOD="${SUBWORD_METHOD:-bpe}"

# clear_progress_line FD: where run.sh redraws a progress line (PROGRESS_LINE=1) on the terminal FD,
# erase it, so that the next line printed starts at the left margin; the line is redrawn below.
clear_progress_line() {
    if [[ ${PROGRESS_LINE:-0} == 1 && -t $1 ]]; then printf '\r\033[K' >&"$1"; fi
}

# fail MESSAGE: print one error line and stop.
fail() {
    clear_progress_line 2
    echo "error: $*" >&2
    exit 1
}

# log MESSAGE: print a progress line tagged with the recipe name.
log() {
    clear_progress_line 1
    echo "[$RECIPE] $*"
}

# parse_workdir ARGS...: check the command line and set WORKDIR to its absolute path.
parse_workdir() {
    if [[ $# -ne 1 || $1 == -* ]]; then
        echo "usage: bash recipes/$RECIPE/prepare.sh WORKDIR" >&2
        exit 2
    fi
    mkdir -p "$1"
    WORKDIR="$(cd "$1" && pwd)"
}

# check_arguments COUNT USAGE ARGS...: print "usage: USAGE" and exit 2 unless ARGS holds COUNT or
# more words, the first not an option.
check_arguments() {
    local count=$1 usage=$2
    shift 2
    if [[ $# -lt $count || ${1:-} == -* ]]; then
        echo "usage: $usage" >&2
        exit 2
    fi
}

# existing_workdir DIR [HINT]: set WORKDIR to the absolute path of the folder DIR; fail, with
# HINT, if there is none.
existing_workdir() {
    WORKDIR="$(cd "$1" 2>/dev/null && pwd)" || fail "WORKDIR $1: no such folder${2:+; $2}"
}

# require_positive_integer NAME: fail unless the variable NAME holds a positive integer.
require_positive_integer() {
    [[ ${!1} =~ ^[1-9][0-9]*$ ]] || fail "$1=${!1}: must be a positive integer"
}

# check_common_settings: validate the settings read by this file.
check_common_settings() {
    require_positive_integer WORKERS
    [[ $SUBWORD_METHOD == bpe || $SUBWORD_METHOD == sentencepiece ]] ||
        fail "SUBWORD_METHOD=$SUBWORD_METHOD: must be bpe or sentencepiece"
}

# data_prep MODULE ARGS...: run `python -m data_prep.MODULE ARGS...` with the repository importable.
data_prep() {
    local module=$1
    shift
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m "data_prep.$module" "$@"
}

# quiet_python MODULE ARGS...: `python -m MODULE ARGS...` with the repository importable and the
# third-party deprecation warnings listed in recipes/quiet.py silenced.
quiet_python() {
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$RECIPES_DIR/quiet.py" "$@"
}

# show_log_problems LOG STATUS: print the warnings and errors that LOG holds (Python warnings and
# logged WARNING/ERROR lines: the third-party deprecations are already silenced) and, if STATUS is
# not 0, LOG's last lines and its path; return STATUS.
show_log_problems() {
    local log=$1 status=$2
    clear_progress_line 2
    grep -E '[A-Za-z]*Warning: |\| (WARNING|ERROR) \||^(WARNING|ERROR):' "$log" >&2 || true
    if [[ $status -ne 0 ]]; then
        echo "last lines of $log:" >&2
        tail -n 15 "$log" >&2
    fi
    return "$status"
}

# run_logged LOG COMMAND...: run COMMAND with its output appended to LOG, then show_log_problems.
run_logged() {
    local log=$1 status=0
    shift
    "$@" >>"$log" 2>&1 || status=$?
    show_log_problems "$log" "$status"
}

# run_step NAME FUNCTION [SETTINGS]: run FUNCTION unless step NAME is marked done with the
# same SETTINGS (a string naming the options its output depends on), then mark it done.
run_step() {
    local name=$1 function=$2 settings=${3:-}
    local marker="$STEPS_DIR/$name.done"
    if [[ -e $marker && "$(cat "$marker")" == "$settings" ]]; then
        log "skip $name: already done${settings:+ ($settings)}"
        return 0
    fi
    log "$name${settings:+ ($settings)}"
    "$function"
    mkdir -p "$STEPS_DIR"
    printf '%s\n' "$settings" >"$marker.partial"
    mv "$marker.partial" "$marker"
}

# fetch URL DEST SHA256 OVERRIDE_VARIABLE: download URL (or the value of OVERRIDE_VARIABLE) to DEST.
fetch() {
    local url=$1 dest=$2 sha256=$3 override_variable=$4
    data_prep download "$url" "$dest" --sha256 "$sha256" --override "${!override_variable:-}" ||
        fail "could not fetch $(basename "$dest"); set $override_variable to a reachable copy (http(s) URL, file:// URL or path)"
}

# concat_files OUTPUT INPUT...: write the concatenation of the inputs to OUTPUT atomically.
concat_files() {
    local output=$1
    shift
    cat "$@" >"$output.partial"
    mv "$output.partial" "$output"
}

# subword_settings: the subword options, for run_step SETTINGS of the steps that depend on them.
subword_settings() {
    if [[ $SUBWORD_METHOD == bpe ]]; then
        echo "bpe merges=$BPE_MERGES"
    else
        echo "sentencepiece vocab=$SPM_VOCAB_SIZE"
    fi
}

# subword_learn DIR TRAIN_FILE...: learn the joint subword model of SUBWORD_METHOD into DIR
# (BPE: DIR/code with BPE_MERGES merges; sentencepiece: DIR/spm.model of SPM_VOCAB_SIZE pieces).
subword_learn() {
    local dir=$1
    shift
    if [[ $SUBWORD_METHOD == bpe ]]; then
        data_prep subword learn --method bpe --size "$BPE_MERGES" --model "$dir/code" "$@"
    else
        data_prep subword learn --method sentencepiece --size "$SPM_VOCAB_SIZE" --model "$dir/spm" "$@"
    fi
}

# subword_apply DIR INPUT OUTPUT: segment INPUT with the model learnt by subword_learn DIR.
subword_apply() {
    local model="$1/code"
    [[ $SUBWORD_METHOD == bpe ]] || model="$1/spm.model"
    data_prep subword apply --method "$SUBWORD_METHOD" --model "$model" --workers "$WORKERS" "$2" "$3"
}

# binarize DESTDIR FAIRSEQ_PREPROCESS_ARGS...: run fairseq-preprocess into DESTDIR, replacing it whole.
binarize() {
    local destination=$1
    shift
    rm -rf "$destination.partial"
    mkdir -p "$(dirname "$destination")"
    : >"$destination.log"
    run_logged "$destination.log" quiet_python fairseq_cli.preprocess "$@" --workers "$WORKERS" \
        --destdir "$destination.partial"
    log "fairseq-preprocess log: $destination.log"
    rm -rf "$destination"
    mv "$destination.partial" "$destination"
}

# report_sizes DIR SOURCE_LANG TARGET_LANG: print the pair counts of DIR/{train,valid,test}.
report_sizes() {
    local dir=$1 split source_count target_count
    for split in train valid test; do
        source_count=$(wc -l <"$dir/$split.$2")
        target_count=$(wc -l <"$dir/$split.$3")
        [[ $source_count -eq $target_count ]] ||
            fail "$dir/$split.$2 has $source_count lines but $dir/$split.$3 has $target_count"
        log "$split: $source_count sentence pairs"
    done
}

# train_once SAVE_DIR WRITES COMMAND...: run the fairseq-train COMMAND, its output appended to
# SAVE_DIR/train.log, unless SAVE_DIR/train.done records the same command; fail unless the run
# left SAVE_DIR/WRITES (a checkpoint file name), then record the command in train.done. The console
# gets one line naming the log, a progress line on a terminal (recipes/progress.py; not with
# NO_PROGRESS=1, when the caller shows it) and one line when it is done. Lines name OPTIMIZER; the
# run's progress counts up to MAX_UPDATE when that is set.
train_once() {
    local save_dir=$1 writes=$2 status=0 watcher=""
    shift 2
    local done_marker=$save_dir/train.done log=$save_dir/train.log
    if [[ -f $done_marker && "$(cat "$done_marker")" == "$*" ]]; then
        log "skip training $OPTIMIZER: already done (delete $done_marker to train again)"
        return 0
    fi
    mkdir -p "$save_dir"
    log "training $OPTIMIZER, log: $log"
    printf 'command: %s\n' "$*" >>"$log"
    if [[ -z ${NO_PROGRESS:-} ]]; then
        PYTHONPATH="$REPO_ROOT" "$PYTHON" "$RECIPES_DIR/progress.py" "$OPTIMIZER=$log:${MAX_UPDATE:-?}" &
        watcher=$!
    fi
    # fairseq's own --log-file repeats every line once per epoch: redirect the output instead
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$@" >>"$log" 2>&1 || status=$?
    if [[ -n $watcher ]]; then
        kill "$watcher" 2>/dev/null || true  # it has exited already where the output is no terminal
        wait "$watcher" || true
    fi
    show_log_problems "$log" "$status" || fail "fairseq-train failed (exit status $status); see $log"
    [[ -f $save_dir/$writes ]] || fail "fairseq-train wrote no $save_dir/$writes; see $log"
    printf '%s\n' "$*" >"$done_marker.partial"
    mv "$done_marker.partial" "$done_marker"
    log "done training $OPTIMIZER in $(grep -o 'done training in [0-9.]*' "$log" | tail -n 1 | cut -d' ' -f4) s"
}

# ordered_hypotheses GENERATE_OUTPUT: print the hypotheses of fairseq-generate's output (its
# H-<id> <score> <text> lines) in the test set's order.
ordered_hypotheses() {
    awk -F '\t' '/^H-/ { print substr($1, 3) "\t" $3 }' "$1" | sort -t $'\t' -k1,1n | cut -f2
}

# require_one_hypothesis_per_line HYPOTHESES REFERENCE GENERATE_OUTPUT: fail unless the two files
# have as many lines.
require_one_hypothesis_per_line() {
    local hypotheses references
    hypotheses=$(wc -l <"$1")
    references=$(wc -l <"$2")
    [[ $hypotheses -eq $references ]] ||
        fail "$3 has $hypotheses hypotheses for the $references lines of $2"
}
