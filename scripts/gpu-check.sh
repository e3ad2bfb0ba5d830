#!/usr/bin/env bash
# Everything that needs a GPU, in one run (meant to finish in under 8 minutes on a
# 16-core machine with one GPU): build enstack against the CUDA torch installed there,
# run the tests marked `cuda`, then the base-shape (12 x 768, seq 512, fp16) training
# throughput against the transformers Trainer. Prints everything; writes the logs to
# $OUT (or gpu-check/) for the README.
#
#   PYTHON=python3 scripts/gpu-check.sh      # a Python whose torch is a CUDA build
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
jobs=$(nproc)
exec > >(tee "$OUT/gpu-check.log") 2>&1

"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
start=$(date +%s)
"$PYTHON" -m pip install -q "scikit-build-core>=0.10" "cmake>=3.26" ninja 2>/dev/null || true
CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$PYTHON" -m pip install -q --no-build-isolation --no-deps \
  -C build-dir=build/gpu -e .
echo "gpu-check: build $(( $(date +%s) - start )) s"

start=$(date +%s)
"$PYTHON" -m pytest -q -m cuda tests/python -p no:cacheprovider
echo "gpu-check: cuda tests $(( $(date +%s) - start )) s"

start=$(date +%s)
"$PYTHON" benchmarks/train.py --device cuda --shape base --precision fp16 --max-length 512 \
  --batch-size 16 --examples 2000 --grouping grouped --threads "$jobs" | tee "$OUT/train-base-fp16.txt"
echo "gpu-check: benchmark $(( $(date +%s) - start )) s"
