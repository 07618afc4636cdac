# Command line of recipes/multi30k/{prepare,run}.sh, sourced after recipes/common.sh.

DEFAULT_WORKDIR=$REPO_ROOT/runs/multi30k
SHARED_DATA=$REPO_ROOT/../shared/data/multi30k

# parse_data_and_workdir SCRIPT ARGS...: parse `[--data DIR] [WORKDIR] [-- FAIRSEQ_TRAIN_FLAGS...]`.
# Sets DATA (absolute folder of the raw .gz files, or empty: download them), WORKDIR (absolute,
# created; default runs/multi30k in the repository) and TRAIN_FLAGS (the flags after --).
parse_data_and_workdir() {
    local script=$1 workdir=""
    shift
    DATA=""
    TRAIN_FLAGS=()
    while [[ $# -gt 0 ]]; do
        case $1 in
        --data)
            [[ $# -ge 2 ]] || fail "--data needs a folder"
            [[ -d $2 ]] || fail "--data $2: no such folder"
            DATA="$(cd "$2" && pwd)"
            shift 2
            ;;
        --)
            shift
            TRAIN_FLAGS=("$@")
            break
            ;;
        -h | --help)
            echo "usage: bash recipes/multi30k/$script [--data DIR] [WORKDIR] [-- FAIRSEQ_TRAIN_FLAGS...]"
            exit 0
            ;;
        -*) fail "unknown option $1; usage: bash recipes/multi30k/$script [--data DIR] [WORKDIR] [-- FAIRSEQ_TRAIN_FLAGS...]" ;;
        *)
            [[ -z $workdir ]] || fail "two work folders given ($workdir and $1); give one WORKDIR"
            workdir=$1
            shift
            ;;
        esac
    done
    if [[ -z $DATA && -d $SHARED_DATA ]]; then
        DATA="$(cd "$SHARED_DATA" && pwd)"
    fi
    mkdir -p "${workdir:-$DEFAULT_WORKDIR}"
    WORKDIR="$(cd "${workdir:-$DEFAULT_WORKDIR}" && pwd)"
}
