#!/usr/bin/env bash
# The prepared GPU check (run on the device machine from the repo root; $OUT comes back). About 5 minutes
# on one H200. Prepare first with tools/gpu_prepare.sh. Steps, each logged under $OUT:
#   1. install sgq-bench (no deps) and the carried wheels into /tmp/site;
#   2. tests/test_cuda.py: CUDA training fp32/bf16, resume, a suite run scored alike on CUDA and CPU;
#   3. `bench train` on MNIST, all four methods, CUDA: per-step cost against baseline;
#   4. the `quick` suite's MNIST cells on CUDA (real data, 1 epoch), rows + report into $OUT.
set -uo pipefail
OUT=${OUT:-gpu-check-out}
DEVICE=${SGQ_GPU_CHECK_DEVICE:-cuda}  # cpu: try the script itself on a machine without a GPU
mkdir -p "$OUT" /tmp/site /tmp/data/MNIST/raw
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg SGQ_BENCH_CACHE=/tmp/sgq-cache SGQ_BENCH_DATA=/tmp/data
export PYTHONPATH=/tmp/site
step() { echo "== $* ($(date -u +%T))"; }

step install
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    || { echo "no wheels: run tools/gpu_prepare.sh here and carry .whl"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . || exit 2
for f in .gpu-data/MNIST/raw/*.gz; do gunzip -c "$f" > "/tmp/data/MNIST/raw/$(basename "$f" .gz)"; done
python3 - <<'PY' | tee "$OUT/device.txt"
import torch, sgq_bench
gpu = torch.cuda.is_available()
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", gpu and torch.cuda.get_device_name(0),
      "bf16", gpu and torch.cuda.is_bf16_supported(), "sgq_bench", sgq_bench.__version__, sgq_bench.__file__)
PY

step tests/test_cuda.py
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -15

step bench train
timeout 120 python3 -m sgq_bench bench train --dataset mnist --device "$DEVICE" --steps 20 --rounds 3 2>&1 \
    | tee "$OUT/bench_train.txt" | tail -15

step quick suite, MNIST cells, CUDA
timeout 240 python3 -m sgq_bench run --suite quick --only dataset=mnist --device "$DEVICE" --out /tmp/run-quick \
    --quiet --no-figures 2>&1 | tail -5
cp /tmp/run-quick/{results.jsonl,summary.md,manifest.json} "$OUT/" 2>/dev/null
step done
