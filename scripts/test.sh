#!/usr/bin/env bash
# Run the test suite from a fresh checkout: builds .venv (full install) and .venv-core (runtime only, no torch),
# installs the JavaScript runtime's packages and Debian's chromium, then runs pytest and the JavaScript tests.
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
# The JavaScript runtime (js/): node --test compares it with the Python runtime and drives the web page in Debian's
# headless chromium (installed here when missing and we are root). Installed first: pytest checks fit-web too.
JS=1
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "skipping the JavaScript tests: node and npm are not installed (Node 18 or newer)"
  JS=0
else
  npm ci --prefix js --no-audit --no-fund --loglevel=error
  if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  fi
  if ! command -v chromium >/dev/null && [ -z "${CHROMIUM:-}" ]; then
    echo "the browser test will be skipped: no chromium (apt-get install -y chromium as root, or set CHROMIUM)"
  fi
fi
.venv/bin/python -m pytest -q "$@"
if [ "$JS" = 1 ]; then
  node --test --test-concurrency=2 js/test/*.test.mjs
fi
