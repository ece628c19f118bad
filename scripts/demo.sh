#!/usr/bin/env bash
# The main job on a fresh machine: install the torch-free runtime into .venv-core and generate images with the
# default model shipped in the repository. Extra arguments go to fit-run (e.g. --width 96 --height 64).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-core/bin/fit-run ]; then
    "$PY" -m venv .venv-core
    .venv-core/bin/pip install -q --upgrade pip
    .venv-core/bin/pip install -q -e .
fi
if [ "$#" -eq 0 ]; then
    set -- --width 96 --height 64 --class circle,square,triangle,diamond,cross,ring,frame,star --num 8 --grid --out demo.png
fi
.venv-core/bin/fit-run "$@"
