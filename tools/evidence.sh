#!/usr/bin/env bash
# Start (or resume) the long evidence runs of issue 20 in the background, one thread each, with their
# checkpoints and task results in evidence/checkpoints (committed: see evidence/README.md). Logs go to
# $LOGS (default /tmp/sgq-evidence), PIDs to $LOGS/*.pid (pause with kill -STOP, resume with kill -CONT).
#
# cifar10_long trains with precision "auto", which is bf16 where the CPU has native bf16 and fp32
# elsewhere. Its published seeds are bf16, and the precision is part of the checkpoint key, so on a CPU
# without native bf16 the run would start fp32 models that pair with nothing (and emulated bf16 is ~9x
# slower than fp32 there: measured 7.7 s vs 0.82 s per resnet20 step on a 2-core EPYC without AVX-512).
# There the second slot runs MNIST ROAR's seeds 4 and 3 instead, into their own directory; both MNIST
# workers share the checkpoint dir, and a task one of them finished is skipped by the other.
# One training at a time on a 2-core CPU: a second one beside it (sgt_pact seed 2 beside seed 1, 2026-12-07,
# AMD EPYC) made both run 10-11 min per epoch against 5 alone, so it gained nothing and delayed the seed
# in flight. (A second process asking for a model in training waits on its <checkpoint>.lock.)
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS="${LOGS:-/tmp/sgq-evidence}"
mkdir -p "$LOGS"
export SGQ_BENCH_DATA="${SGQ_BENCH_DATA:-$(cd .. && pwd)/shared/data}"
CK=evidence/checkpoints
start() {  # name, then the run's arguments
  local name=$1; shift
  nohup sgq-bench run "$@" --checkpoint-dir "$CK" --threads 1 > "$LOGS/$name.log" 2>&1 &
  echo $! > "$LOGS/$name.pid"
  echo "started $name (pid $(cat "$LOGS/$name.pid")), log $LOGS/$name.log"
}
# MNIST ROAR/KAR (mnist_roar, mnist_roar_cheap) is complete and published (2026-12-05).
if python -c "import sys, torch; from sgq_bench.train import bf16_supported; sys.exit(not bf16_supported(torch.device('cpu')))"; then
  start cifar10_long --suite cifar10_long --out docs/results/cifar10_long
else
  echo "this CPU has no native bf16: cifar10_long (bf16 seeds: sgt/sgt_pact seed 1, then seed 2) waits for one;"
  echo "nothing started (on a GPU session run tools/gpu_check.sh and cifar10_long with --device cuda)"
fi
