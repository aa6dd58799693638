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
start mnist_roar --suite configs/mnist_roar.toml --out docs/results/mnist_roar
if python -c "import sys, torch; from sgq_bench.train import bf16_supported; sys.exit(not bf16_supported(torch.device('cpu')))"; then
  start cifar10_long --suite cifar10_long --out docs/results/cifar10_long
else
  echo "this CPU has no native bf16: cifar10_long (bf16 seeds) waits for one; second MNIST ROAR worker instead"
  start mnist_roar_b --suite configs/mnist_roar.toml --only seed=4,seed=3 --out "${MNIST_ROAR_B:-/tmp/sgq-mnist-roar-b}"
fi
