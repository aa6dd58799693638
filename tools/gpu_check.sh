#!/usr/bin/env bash
# The prepared GPU check (run on the device machine from the repo root; $OUT comes back). About 5 minutes
# on one H200, at most about 8.5 (the step limits below). Prepare first with tools/gpu_prepare.sh. Steps,
# each logged under $OUT; the exit status is 1 if any step failed:
#   1. install sgq-bench (no deps) and the carried wheels into /tmp/site (fresh each time);
#   2. tests/test_cuda.py: CUDA training fp32/bf16, resume, a suite run scored alike on CUDA and CPU;
#   3. `bench train` on MNIST, all four methods: per-step cost against baseline;
#   4. the `quick` suite's MNIST cells (real data, 1 epoch); its rows and manifest are copied to $OUT.
# $OUT ends with 6 files (the device tool brings back at most 8).
set -uo pipefail
OUT=${OUT:-gpu-check-out}
DEVICE=${SGQ_GPU_CHECK_DEVICE:-cuda}  # cpu: try the script itself on a machine without a GPU
rm -rf /tmp/site /tmp/sgq-cache /tmp/data /tmp/run-quick
mkdir -p "$OUT" /tmp/site /tmp/data/MNIST/raw
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg SGQ_BENCH_CACHE=/tmp/sgq-cache SGQ_BENCH_DATA=/tmp/data
export PYTHONPATH=/tmp/site
failed=()
step() { echo "== $* ($(date -u +%T))"; }
check() { [ "$1" -eq 0 ] || { failed+=("$2 (exit $1)"); echo "!! $2 failed (exit $1)"; }; }

step install
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "no wheels: run tools/gpu_prepare.sh here and carry .whl"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . \
    || exit 2
for f in .gpu-data/MNIST/raw/*.gz; do gunzip -c "$f" > "/tmp/data/MNIST/raw/$(basename "$f" .gz)" || exit 2; done
python3 - <<'PY' | tee "$OUT/device.txt"
import torch, sgq_bench
gpu = torch.cuda.is_available()
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", gpu and torch.cuda.get_device_name(0),
      "bf16", gpu and torch.cuda.is_bf16_supported(), "sgq_bench", sgq_bench.__version__, sgq_bench.__file__)
PY

step tests/test_cuda.py
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
check $? "tests/test_cuda.py"; tail -15 "$OUT/test_cuda.log"

step bench train
timeout 90 python3 -m sgq_bench bench train --dataset mnist --device "$DEVICE" --steps 20 --rounds 3 \
    > "$OUT/bench_train.txt" 2>&1
check $? "bench train"; tail -15 "$OUT/bench_train.txt"

step quick suite, MNIST cells
timeout 200 python3 -m sgq_bench run --suite quick --only dataset=mnist --device "$DEVICE" --out /tmp/run-quick \
    --quiet --no-figures > "$OUT/run_quick.log" 2>&1
check $? "quick suite (MNIST)"; tail -5 "$OUT/run_quick.log"
cp /tmp/run-quick/results.jsonl /tmp/run-quick/manifest.json "$OUT/" 2>/dev/null  # rows so far, even if stopped

step done
if [ ${#failed[@]} -gt 0 ]; then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
echo "all steps passed"
