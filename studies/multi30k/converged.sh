#!/usr/bin/env bash
# The Multi30k De->En study of Adam against Adam-SAGE at convergence (docs/results.md), run in the
# background and resumable:
#   1. prepare the data once (recipes/multi30k/prepare.sh);
#   2. budget phase: Adam at BUDGET_LR for BUDGET_MAX_UPDATE updates, validated at each epoch's end
#      (fairseq --eval-bleu, greedy); studies/multi30k/budget.py picks the budget, on the mean of 3
#      consecutive validations, where neither the last BUDGET_TAIL nor the rest of the run gains
#      BUDGET_MIN_GAIN: MAX_UPDATE of every later run (WORKDIR/budget.json); with BUDGET set (a budget
#      chosen before, e.g. by an earlier study), no budget run: every run trains BUDGET updates;
#   3. the grid (ADAM_LRS; SAGE_LRS x SAGE_BETA0S; first seed of SEEDS): every run keeps a checkpoint
#      at each epoch's end (the last AVERAGE_LAST), averages them (fairseq_sage.tools.average_checkpoints)
#      into checkpoint_avg.pt, and scores it on val (beam 5, sacreBLEU); while an optimizer's best lr
#      is at an edge of its grid, one lr beyond it is added (at most MAX_WIDEN times; plan.py widen);
#   4. every seed of each best setting (highest validation BLEU of checkpoint_avg.pt), both models
#      (checkpoint_avg.pt, checkpoint_best.pt: the best epoch by validation BLEU) scored on test2016
#      and test2017 with sacreBLEU and chrF, and the pruning curve of its checkpoint_avg.pt
#      (python -m fairseq_sage.analysis, in the run's analysis/);
#   5. per test set, sacreBLEU's paired bootstrap (--paired-bs) between each optimizer's best seed
#      (by validation BLEU);
#   6. figures and report (studies/multi30k/converged_report.py): WORKDIR/results.md and the
#      converged section of RESULTS_DOC.
# Finished steps are skipped (markers in .steps/), an interrupted training resumes from its last
# epoch checkpoint, so a killed study loses at most the epoch in progress of each running run.
# With RECORDS=DIR, each finished run also leaves DIR/NAME.tar.gz: what the report reads of it (step
# markers, train.log, scores, translations, pruning CSV; no checkpoint, about 0.1 MB). A study whose
# WORKDIR lacks a run (a new WORKDIR, another machine) restores it from its record instead of
# training it, where the record holds every step the run's stage needs; a restored run that a later
# stage needs more of (the first seed of a best setting, recorded after the grid) is trained again.
# JOBS runs go at once. WORKDIR/progress.md says the runs done and remaining and the ETA.
#
# Usage: bash studies/multi30k/run_study.sh --converged [--data DIR] [--plan] [--foreground] [WORKDIR]
#            [-- FAIRSEQ_TRAIN_FLAGS...]
#   without --foreground the study goes to the background (output in WORKDIR/study.log) after
#   printing its time estimate; the same command resumes it. WORKDIR: default runs/multi30k_converged
#
# Environment (defaults in brackets):
#   ADAM_LRS [2e-3 4e-3 6e-3]  SAGE_LRS [4e-3 8e-3 1.2e-2]  SAGE_BETA0S [0.6 0.8]  SEEDS [1 2 3 4 5]
#   MAX_WIDEN [2]  lrs that may be added to each optimizer's grid
#   BUDGET_LR [4e-3]  BUDGET_MAX_UPDATE [2600]  BUDGET_TAIL [0.2]  BUDGET_MIN_GAIN [0.3]  the budget rule
#   BUDGET [none]  updates of every run, given instead of the budget phase's choice
#   TUNED_BY [none]  where given settings (BUDGET, a grid of the chosen lrs) come from: a sentence
#             the report's design section quotes (markdown)
#   AVERAGE_LAST [5]  epoch checkpoints averaged   MAX_TOKENS [4096]  WARMUP_UPDATES [200]  LOG_INTERVAL [25]
#   MAX_TRAIN_LINES, MAX_TEST_LINES, SPM_VOCAB_SIZE, PRUNE_*, RESULTS_DOC: as in run_study.sh
#   RECORDS [none]  the folder of the runs' records (above)
#   PROGRESS_INTERVAL [300]  seconds between two refreshes of WORKDIR/progress.md (also at each run's end)
#   JOBS [2]  runs at once; with JOBS > 1 and no OMP_NUM_THREADS, each gets cores / JOBS threads
#             (the budget run, which runs alone, gets every core, and so do the last runs of a
#             stage that holds fewer than JOBS of them: they wait for the others, then share them)
set -euo pipefail
RECIPE=multi30k-converged
STUDY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$STUDY_DIR/../../recipes/common.sh"
source "$STUDY_DIR/lib.sh"
USAGE="usage: bash studies/multi30k/run_study.sh --converged [--data DIR] [--plan] [--foreground] [WORKDIR] [-- FAIRSEQ_TRAIN_FLAGS...]"

FIXED_SETTINGS=(MAX_TRAIN_LINES MAX_TEST_LINES SPM_VOCAB_SIZE BUDGET BUDGET_LR BUDGET_MAX_UPDATE BUDGET_TAIL
    BUDGET_MIN_GAIN AVERAGE_LAST WARMUP_UPDATES MAX_TOKENS LOG_INTERVAL TRAIN_FLAGS)
PLAN_SETTINGS=(ADAM_LRS SAGE_LRS SAGE_BETA0S SEEDS MAX_WIDEN TUNED_BY JOBS PRUNE_LEVELS PRUNE_SUBSET PRUNE_BATCHES)
declare -A DEFAULTS=(
    [ADAM_LRS]="2e-3 4e-3 6e-3" [SAGE_LRS]="4e-3 8e-3 1.2e-2" [SAGE_BETA0S]="0.6 0.8" [SEEDS]="1 2 3 4 5"
    [MAX_WIDEN]=2 [TUNED_BY]="" [BUDGET]="" [BUDGET_LR]=4e-3 [BUDGET_MAX_UPDATE]=2600 [BUDGET_TAIL]=0.2 [BUDGET_MIN_GAIN]=0.3
    [AVERAGE_LAST]=5 [MAX_TOKENS]=4096 [WARMUP_UPDATES]=200 [LOG_INTERVAL]=25 [JOBS]=2
    [MAX_TRAIN_LINES]=all [MAX_TEST_LINES]=all [SPM_VOCAB_SIZE]=8000
    [PRUNE_LEVELS]=0,10,20,30,40 [PRUNE_SUBSET]=test [PRUNE_BATCHES]=8
)
AVERAGED=checkpoint_avg
PROGRESS_INTERVAL=${PROGRESS_INTERVAL:-300}
RECORDS=${RECORDS:+$(mkdir -p "$RECORDS" && cd "$RECORDS" && pwd)}

check_settings() {
    local setting
    check_grid_settings
    require_numbers BUDGET_LR '^[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?$' "a learning rate like 4e-3"
    [[ $BUDGET_TAIL =~ ^0?\.[0-9]*[1-9][0-9]*$ ]] || fail "BUDGET_TAIL=$BUDGET_TAIL: give a fraction in (0, 1) like 0.2"
    [[ $BUDGET_MIN_GAIN =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail "BUDGET_MIN_GAIN=$BUDGET_MIN_GAIN: give BLEU points like 0.3"
    [[ -z $BUDGET ]] || require_positive_integer BUDGET
    [[ $MAX_WIDEN =~ ^[0-9]+$ ]] || fail "MAX_WIDEN=$MAX_WIDEN: must be a whole number like 2"
    for setting in BUDGET_MAX_UPDATE AVERAGE_LAST MAX_TOKENS WARMUP_UPDATES LOG_INTERVAL JOBS PROGRESS_INTERVAL; do
        require_positive_integer "$setting"
    done
}

# average_run: average the run's last AVERAGE_LAST epoch checkpoints into checkpoint_avg.pt.
average_run() {
    quietly "$RUN_DIR/logs/average.out" env PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" \
        -m fairseq_sage.tools.average_checkpoints --inputs "$RUN_DIR/checkpoints/$RUN_OPTIMIZER" \
        --num-epoch-checkpoints "$AVERAGE_LAST" --output "$RUN_DIR/checkpoints/$RUN_OPTIMIZER/$AVERAGED.pt"
}

score_validation() {
    EVAL_MODEL=$AVERAGED score_sets "$RUN_DIR/logs/valid.out" valid
}

# sacrebleu_json OUTPUT SACREBLEU_ARGS...: sacreBLEU's JSON result in OUTPUT (atomically), its messages
# in OUTPUT.log.
sacrebleu_json() {
    local output=$1
    shift
    "$PYTHON" -m sacrebleu "$@" --format json </dev/null >"$output.partial" 2>"$output.log" ||
        fail "sacrebleu failed; its messages are in $output.log"
    mv "$output.partial" "$output"
}

# score_tests: sacreBLEU (evaluate.sh) and chrF (sacrebleu -m chrf) of both models on both test sets.
score_tests() {
    local model name folder
    for model in "$AVERAGED" checkpoint_best; do
        EVAL_MODEL=$model score_sets "$RUN_DIR/logs/test.$model.out" test2016 test2017
        folder=$(EVAL_MODEL=$model eval_dir)
        for name in test2016 test2017; do
            sacrebleu_json "$folder/$name.chrf.json" "$RUN_DIR/text/$name.en" --input "$folder/$name.hyp" \
                --metrics chrf --width 2
        done
    done
}

# last_step STAGE: the step that finishes a run of STAGE (grid: its validation score; final: its
# pruning curve, after the test scores).
last_step() {
    if [[ $1 == grid ]]; then echo valid; else echo pruning; fi
}

# record_holds NAME STEP: whether RECORDS holds run NAME's record with the marker of STEP.
record_holds() {
    [[ -n $RECORDS && -f $RECORDS/$1.tar.gz ]] || return 1
    local members  # listed first: grep -q ending before tar would fail the pipe (pipefail)
    members=$(tar -tzf "$RECORDS/$1.tar.gz")
    grep -qx "\.steps/$1\.$2\.done" <<<"$members"
}

# save_record: the run's record RECORDS/RUN_NAME.tar.gz (see the top), the same bytes for the same
# files, replaced atomically only where they changed.
save_record() {
    local record=$RECORDS/$RUN_NAME.tar.gz
    (
        cd "$RUN_DIR"
        {
            find .steps -type f
            find eval -type f \( -name '*.json' -o -name '*.hyp' \)
            find checkpoints -name train.log
            [[ ! -d analysis ]] || find analysis -name '*.csv'
        } | LC_ALL=C sort | tar -c --no-recursion --owner=0 --group=0 --numeric-owner --mtime=@0 -T - | gzip -n
    ) >"$record.partial"
    if cmp -s "$record.partial" "$record"; then
        rm "$record.partial"
    else
        chmod 644 "$record.partial"
        mv "$record.partial" "$record"
    fi
}

# restore_record STAGE: true where the run's folder holds STAGE's last step as restored from its
# record, or is filled from its record now (the folder had no trained run and the record holds that
# step); else false. A folder restored from a record that lacks the step is emptied first (it holds
# nothing but that copy), so that a newer record or a new training replaces it.
restore_record() {
    local step
    step=$(last_step "$1")
    if [[ -f $RUN_DIR/.restored ]]; then
        [[ ! -f $STEPS_DIR/$RUN_NAME.$step.done ]] || return 0
        rm -r "$RUN_DIR"
        use_run "$RUN_NAME" "$RUN_OPTIMIZER" "$RUN_LR" "${RUN_BETA0:--}" "$RUN_SEED"
    fi
    [[ ! -f $STEPS_DIR/$RUN_NAME.train.done ]] && record_holds "$RUN_NAME" "$step" || return 1
    tar -xzf "$RECORDS/$RUN_NAME.tar.gz" -C "$RUN_DIR"
    touch "$RUN_DIR/.restored"
    log "$RUN_NAME: restored from $RECORDS/$RUN_NAME.tar.gz (no checkpoints: its steps are not run again)"
}

# process_run STAGE NAME OPTIMIZER LR BETA0 SEED: train, average and score one run (STAGE grid or
# final: final runs are also scored on the test sets and pruned), or restore it from its record;
# then update its record and the progress file.
process_run() {
    local stage=$1
    shift
    use_run "$@"
    if restore_record "$stage"; then
        study_python progress "$WORKDIR" >/dev/null
        return 0
    fi
    local settings="lr=$RUN_LR beta0=${RUN_BETA0:--} seed=$RUN_SEED updates=$MAX_UPDATE"
    run_step "$RUN_NAME.train" train_run "$settings"
    run_step "$RUN_NAME.average" average_run "last $AVERAGE_LAST epochs of $(digest "$RUN_CHECKPOINT")"
    local averaged="checkpoint md5 $(digest "$RUN_DIR/checkpoints/$RUN_OPTIMIZER/$AVERAGED.pt")"
    run_step "$RUN_NAME.valid" score_validation "$averaged"
    if [[ $stage != grid ]]; then
        run_step "$RUN_NAME.test" score_tests "$averaged best md5 $(digest "$RUN_CHECKPOINT")"
        RUN_CHECKPOINT=$RUN_DIR/checkpoints/$RUN_OPTIMIZER/$AVERAGED.pt PRUNE_DIR=$RUN_DIR/analysis
        run_step "$RUN_NAME.pruning" prune_run \
            "$averaged levels=$PRUNE_LEVELS subset=$PRUNE_SUBSET batches=$PRUNE_BATCHES"
    fi
    [[ -z $RECORDS ]] || save_record
    study_python progress "$WORKDIR" >/dev/null
}

# run_finished STAGE NAME ...: whether run NAME's last step for STAGE has its marker, in WORKDIR or
# in its record.
run_finished() {
    local step
    step=$(last_step "$1")
    [[ -f $WORKDIR/runs/$2/.steps/$2.$step.done ]] || record_holds "$2" "$step"
}

# paired_bootstrap: sacreBLEU's paired bootstrap, Adam's best seed as the baseline, per test set.
paired_bootstrap() {
    local pair name
    mapfile -t pair < <(study_python plan pair "$WORKDIR" | cut -d' ' -f1)
    mkdir -p "$WORKDIR/paired"
    for name in test2016 test2017; do
        sacrebleu_json "$WORKDIR/paired/$name.json" "$WORKDIR/data/text/$name.en" \
            --input "$WORKDIR/runs/${pair[0]}/eval/adam/$AVERAGED/$name.hyp" \
            "$WORKDIR/runs/${pair[1]}/eval/adam_sage/$AVERAGED/$name.hyp" --paired-bs --metrics bleu
    done
}

write_report() {
    quietly "$WORKDIR/report.out" study_python converged_report "$WORKDIR" --doc "$RESULTS_DOC"
}

parse_arguments "$REPO_ROOT/runs/multi30k_converged" "$@"
apply_defaults
check_settings
MAX_UPDATE=${BUDGET:-budget}
SELECTION_MODEL=$AVERAGED
FIXED_SETTINGS+=(MAX_UPDATE SELECTION_MODEL)
record_settings
if [[ $PLAN_ONLY == 1 ]]; then
    study_python converged_report "$WORKDIR" ${PLAN_DOC:+"$PLAN_DOC" "$RESULTS_DOC"}
    exit 0
fi
exec 9>"$WORKDIR/.lock"
flock -n 9 || fail "a study is already running in $WORKDIR; its progress is in $WORKDIR/progress.md"
if [[ $FOREGROUND == 0 ]]; then
    study_python progress "$WORKDIR" --estimate
    exec 9>&-
    setsid nohup bash "$STUDY_DIR/converged.sh" --foreground ${DATA:+--data "$DATA"} "$WORKDIR" \
        -- "${USER_TRAIN_FLAGS[@]}" </dev/null >>"$WORKDIR/study.log" 2>&1 &
    log "running in the background (process group $!): output in $WORKDIR/study.log, progress in" \
        "$WORKDIR/progress.md; run the same command again to resume it after an interruption"
    exit 0
fi
BUDGET_THREADS=${OMP_NUM_THREADS:-$(cores)}  # the budget run is the only one running: every core
share_cores
export PYTHON WORKERS WARMUP_UPDATES MAX_TOKENS MAX_TRAIN_LINES MAX_TEST_LINES SPM_VOCAB_SIZE
export EPOCH_CHECKPOINTS=1
STUDY_TRAIN_FLAGS=(--log-interval "$LOG_INTERVAL" --keep-last-epochs "$AVERAGE_LAST" --eval-bleu
    --eval-bleu-args '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}' --eval-bleu-remove-bpe sentencepiece
    --best-checkpoint-metric bleu --maximize-best-checkpoint-metric)
started=$SECONDS
log "started (pid $$) with $JOBS run(s) at a time"
# progress.md is also refreshed every PROGRESS_INTERVAL seconds, so that it shows the running runs'
# updates; the refresher is no job of this shell (run_all counts those), ends with it and does not
# hold the lock (fd 9), which its sleep would otherwise keep for up to PROGRESS_INTERVAL after a failure
(exec 9>&-; while sleep "$PROGRESS_INTERVAL" && kill -0 $$ 2>/dev/null; do study_python progress "$WORKDIR" || true; done) \
    </dev/null >/dev/null 2>&1 &
refresher=$!
disown "$refresher"
trap 'kill "$refresher" 2>/dev/null || true' EXIT

quietly "$WORKDIR/data/prepare.out" bash "$RECIPES_DIR/multi30k/prepare.sh" ${DATA:+--data "$DATA"} "$WORKDIR/data"

if [[ -z $BUDGET ]]; then
    use_run budget adam "$BUDGET_LR" - "${SEEDS%% *}"
    OMP_NUM_THREADS=$BUDGET_THREADS MAX_UPDATE=$BUDGET_MAX_UPDATE EPOCH_CHECKPOINTS=0 run_step budget.train train_run "lr=$BUDGET_LR updates=$BUDGET_MAX_UPDATE"
    MAX_UPDATE=$(study_python budget "$WORKDIR")
    log "budget: $MAX_UPDATE updates per run ($WORKDIR/budget.json)"
else
    log "budget: $MAX_UPDATE updates per run, given (BUDGET)"
fi
export MAX_UPDATE
study_python progress "$WORKDIR" >/dev/null

grid=$(study_python plan grid "$WORKDIR")
while [[ -n $grid ]]; do
    run_all grid <<<"$grid"
    grid=$(study_python plan widen "$WORKDIR")
    [[ -z $grid ]] || log "widened the grid: $(cut -d' ' -f1 <<<"$grid" | xargs)"
done
run_all final < <(study_python plan final "$WORKDIR")

STEPS_DIR=$WORKDIR/.steps
pair=$(study_python plan pair "$WORKDIR" | cut -d' ' -f1 | xargs)
run_step paired-bootstrap paired_bootstrap "$pair $(cat "$WORKDIR"/runs/*/.steps/*.test.done | md5sum | cut -d' ' -f1)"
STEPS_DIR=$WORKDIR/.steps
run_step report write_report "inputs md5 $(report_inputs_digest) doc=$RESULTS_DOC"
study_python progress "$WORKDIR" >/dev/null
log "finished in $((SECONDS - started)) s; report: $WORKDIR/results.md and $RESULTS_DOC"
