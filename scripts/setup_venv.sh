#!/usr/bin/env bash
# Create or update the virtual environment of `make`: VENV from PYTHON (3.10-3.12), then torch
# 2.13.0 and this package with its recipes, analysis, test and hf extras, at the versions of
# constraints.txt; pip's output goes to VENV/pip.log. torchaudio is kept only where it imports
# (see setup.py).
#
# Usage: bash scripts/setup_venv.sh PYTHON VENV
set -euo pipefail
cd "$(dirname "$0")/.."
python=$1 venv=$2
fail() {
    echo "error: $*" >&2
    exit 1
}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    fail "PYTHON=$python: no such Python; run e.g. make PYTHON=python3.11 (3.10 to 3.12)"
case $version in
3.10 | 3.11 | 3.12) ;;
*) fail "PYTHON=$python is Python $version; fairseq needs 3.10 to 3.12: run e.g. make PYTHON=python3.11" ;;
esac
if [[ ! -x $venv/bin/python ]] || [[ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$version" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
log=$venv/pip.log
echo "installing the dependencies into $venv (Python $version; takes minutes the first time; pip's log: $log)"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
{
    "${pip[@]}" install -c constraints.txt torch==2.13.0 &&
        "${pip[@]}" install -c constraints.txt -e ".[recipes,analysis,test,hf]"
} >>"$log" 2>&1 || {
    tail -n 15 "$log" >&2
    fail "pip failed; see $log"
}
if "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchaudio") is None)' &&
    ! "$venv/bin/python" -c 'import torchaudio' >>"$log" 2>&1; then
    "${pip[@]}" uninstall -y torchaudio >>"$log" 2>&1
    echo "uninstalled torchaudio: it does not load with this torch, and only fairseq's speech tasks use it (see setup.py)"
fi
