#!/usr/bin/env bash
# Run HERE (the CPU machine, repo root) before tools/gpu_check.sh: packs what the GPU machine lacks into two
# git-ignored folders that the device call carries (64 MiB in all).
#   .whl/      captum and quantus wheels for the GPU image's Python 3.12 (it has torch, pandas, click...)
#   .gpu-data/ real MNIST, gzipped (11 MB; CIFAR-10 is 162 MB and cannot travel, so the GPU check is MNIST)
# Then: run(command="bash tools/gpu_check.sh", carry=[".whl", ".gpu-data"], timeout_s=560).
set -euo pipefail
data=${SGQ_BENCH_DATA:?set SGQ_BENCH_DATA to the folder holding MNIST/raw}
for d in .whl .gpu-data; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
rm -rf .whl .gpu-data && mkdir -p .whl .gpu-data/MNIST/raw
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
    "captum==0.9.0" "quantus==0.6.0"
for f in "$data"/MNIST/raw/*-ubyte; do gzip -c "$f" > ".gpu-data/MNIST/raw/$(basename "$f").gz"; done
du -sh .whl .gpu-data
