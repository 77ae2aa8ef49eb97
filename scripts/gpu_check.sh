#!/usr/bin/env bash
# The GPU checks in one command, within 10 minutes on one GPU: the CUDA-marked tests (fast paths on the GPU against
# the CPU references), then the benchmark tables with --device cuda. Every step is bounded (8 minutes at most in all)
# and a failing one stops the script with its name. Writes OUT (default outputs/gpu_check): device.txt, the tests'
# JUnit XML, each table as Markdown (.md) and its rows (.json).
#
#   scripts/gpu_check.sh [OUT]             # PY=python-with-relzoo (default .venv/bin/python, else python)
#   TIMM_BENCHMARK=path/to/benchmark.py scripts/gpu_check.sh    # also timm's own benchmark.py beside relzoo's
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-outputs/gpu_check}
mkdir -p "$OUT"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else
    f"gpu_check.sh: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})")'
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)' | tee "$OUT/device.txt"
export HF_HUB_OFFLINE=1
step() {  # step NAME SECONDS COMMAND...: one bounded step; a failure or timeout stops the script with its name
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  if ! timeout "$limit" "$@"; then echo "gpu_check.sh: step '$name' failed or ran past ${limit} s" >&2; exit 1; fi
}
step tests 120 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider --junitxml "$OUT/tests.xml"
bench() {  # bench NAME SECONDS ARGS...: scripts/benchmark.py ARGS --device cuda; table NAME.md, rows NAME.json
  local name=$1 limit=$2; shift 2
  echo "== benchmark $name (at most ${limit} s)"
  if ! timeout "$limit" "$PY" scripts/benchmark.py "$@" --device cuda --json "$OUT/$name.json" > "$OUT/$name.md"; then
    echo "gpu_check.sh: benchmark '$name' failed or ran past ${limit} s" >&2; exit 1
  fi
  cat "$OUT/$name.md"
}
bench san_operators 60 san --models san10_pair resnet50 --batch 8
timm_args=()
[ -n "${TIMM_BENCHMARK:-}" ] && timm_args=(--timm_benchmark "$TIMM_BENCHMARK")
bench san_models 180 san --skip_operators --batch 8 32 --models san10_pair san10_patch resnet26 resnet50 \
  "${timm_args[@]}"
bench hsnet 60 hsnet
bench ctx 60 ctx
echo "gpu_check.sh: all steps passed; tables in $OUT"
