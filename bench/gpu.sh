#!/usr/bin/env bash
# Benchmark 7 on a GPU machine: LLaVA-1.5-7B architecture, random weights built on the GPU (no
# download), fp16 and bf16, batch 8, 256 new tokens: tokens/s and kevo capture / plain generate.
# Usage: bench/gpu.sh [extra gpu_bench.py options]      (bench/gpu.sh --tiny runs the logic on the CPU)
# Results: bench/out/gpu-results.json (copy the figures into BENCHMARKS.md with the device name).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$PY" bench/gpu_bench.py --bf16 "$@"
