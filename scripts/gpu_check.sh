#!/usr/bin/env bash
# The one script for a GPU machine: runs what has never run on a GPU and writes one report.
#
#   scripts/gpu_check.sh [--out WORKDIR] [--report-dir DIR] [--dry-run]
#
# Expects CUDA PyTorch, onnx and onnxruntime already installed (no network needed): installs this project
# without dependencies, then runs each step of scripts/gpu_check.py in its own process with its own time
# limit (a failing step does not stop the others), working in WORKDIR (default: a new temporary folder), and
# writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: benchmarks/results). The TensorRT tests run
# inside `pytest -m gpu` when tensorrt imports, and the int8/fp8 Q/DQ builds in tensorrt_qdq. Under 8 minutes on one
# H200 without TensorRT. --dry-run prints the commands.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=""
REPORT=benchmarks/results
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --report-dir) REPORT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
# Seconds each step may take (the sum stays under 12 minutes; tensorrt_qdq returns at once without TensorRT).
declare -A LIMIT=([pytest_gpu]=90 [train_bf16]=60 [ddp_nccl]=60 [sampling]=30 [export_onnx]=60 [latency]=150
               [tensorrt_qdq]=240)

run() {
  if [ "$DRY" = 1 ]; then echo "$*"; else echo "+ $*"; "$@"; fi
}

if [ -z "$OUT" ]; then
  if [ "$DRY" = 1 ]; then OUT=WORKDIR; else OUT=$(mktemp -d -t fit-gpu-check.XXXXXX); fi
fi
run "$PY" -m pip install --no-deps --no-build-isolation -q -e .
[ "$DRY" = 1 ] || mkdir -p "$OUT"
"$PY" -m scripts.gpu_check list | while read -r step mode; do
  if [ "$mode" = torchrun ]; then
    run timeout "${LIMIT[$step]}" "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
      -m scripts.gpu_check run "$step" --out "$OUT"
  else
    run timeout "${LIMIT[$step]}" "$PY" -m scripts.gpu_check run "$step" --out "$OUT"
  fi
done
run "$PY" -m scripts.gpu_check report --out "$OUT" --report-dir "$REPORT"
