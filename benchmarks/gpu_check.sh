#!/usr/bin/env bash
# Every GPU claim in one run (benchmarks/gpu_check.py says what): on a machine with one GPU (two
# for the FSDP check), with $PYTHON (default: .venv/bin/python where `make` made it, else python),
#
#   bash benchmarks/gpu_check.sh [--data DIR] [--workdir DIR] [--out benchmarks/gpu_check.json]
#
# and, on any machine, `bash benchmarks/gpu_check.sh --dry-run` runs the same steps on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
[[ -n ${PYTHON:-} || ! -x .venv/bin/python ]] || python=.venv/bin/python  # the one `make` creates
exec "$python" -m benchmarks.gpu_check "$@"
