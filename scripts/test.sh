#!/usr/bin/env bash
# Run the test suite from a fresh checkout: builds .venv (full install) and .venv-core (runtime only, no torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
# torch first, pinned: a CPU build is enough for the tests.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
if [ ! -x .venv-core/bin/python ]; then "$PY" -m venv .venv-core; fi
.venv-core/bin/pip install -q -e . pytest
export FIT_CORE_PYTHON="$PWD/.venv-core/bin/python"
.venv/bin/python -m pytest -q "$@"
