#!/usr/bin/env bash
# Every GPU claim in one run (benchmarks/gpu_check.py says what): on a machine with one GPU (two
# for the FSDP check), from the repository's virtual environment,
#
#   bash benchmarks/gpu_check.sh [--data DIR] [--workdir DIR] [--out benchmarks/gpu_check.json]
#
# and, on any machine, `bash benchmarks/gpu_check.sh --dry-run` runs the same steps on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m benchmarks.gpu_check "$@"
