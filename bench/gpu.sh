#!/usr/bin/env bash
# Benchmark 7 on a GPU machine: LLaVA-1.5-7B architecture, random weights built on the GPU (no
# download), fp16 and bf16, batch 8, 256 new tokens: tokens/s and kevo capture / plain generate; then (fp16)
# full kevo ingest with every layer's hidden states / --hidden none, capture's peak device memory on a
# 2,000-token prompt with and without prompt positions, the store's writes / raw writes on that disk.
# Usage: bench/gpu.sh [extra gpu_bench.py options]      (bench/gpu.sh --tiny runs the logic on the CPU)
# Then causal tracing (bench/gpu_trace.py): questions per hour.
# Results: bench/out/gpu-results.json, bench/out/gpu-trace-results.json (copy the figures into BENCHMARKS.md with the device name).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" bench/gpu_bench.py --bf16 "$@"
# causal tracing (kevo trace's engine), LLaVA-1.5-7B architecture, fp16: questions per hour
# (bench/gpu_trace.py --tiny checks the logic on the CPU) -> bench/out/gpu-trace-results.json
tiny=(); for a in "$@"; do [ "$a" = --tiny ] && tiny=(--tiny); done
exec "$PY" bench/gpu_trace.py "${tiny[@]}"
