#!/usr/bin/env bash
# The GPU checks, then the benchmark on CUDA, in about five minutes (CI has no GPU):
#
#   bash tests/gpu/run.sh [OUTDIR]          # default gpu-results/
#
# Needs an NVIDIA GPU, the project importable by $PYTHON (default python3), wrk and taskset.
# Writes OUTDIR/check-cuda.md (outputs against the CPU's, golden checks, NVML gauges under
# load) and OUTDIR/bench-cuda.md (Frameworm, the plain FastAPI endpoint and the model alone on
# the GPU: float32, float16, a CUDA graph, torch.compile). Exits non-zero when either fails.
set -uo pipefail
out=${1:-gpu-results}
py=${PYTHON:-python3}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
status=0
"$py" -m tests.gpu.check_cuda --seconds 10 2>&1 | tee "$out/check-cuda.md"
check=${PIPESTATUS[0]}
if [ "$check" -eq 2 ]; then
    exit 2  # no CUDA device here: nothing to benchmark on (check_cuda said why)
fi
[ "$check" -eq 0 ] || status=1
configs=cnn-everything-on,cnn-batching,cnn-nobatch,plain-fastapi-cnn,mlp-everything-on,plain-fastapi-mlp,cold-start,model-alone
"$py" -m tests.load.bench --device cuda --configs "$configs" --connections 1,64 \
    --warmup 2 --duration 5 --runs 1 --cold-starts 1 --alone-seconds 1 \
    --out "$out/bench-cuda.md" 2>&1 | tee "$out/bench-cuda.log" || status=1
exit $status
