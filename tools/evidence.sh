#!/usr/bin/env bash
# Start (or resume) the long evidence runs of issue 20 in the background, one thread each, with their
# checkpoints and task results in evidence/checkpoints (committed: see evidence/README.md). Logs go to
# $LOGS (default /tmp/sgq-evidence), PIDs to $LOGS/*.pid (pause with kill -STOP, resume with kill -CONT).
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS="${LOGS:-/tmp/sgq-evidence}"
mkdir -p "$LOGS"
export SGQ_BENCH_DATA="${SGQ_BENCH_DATA:-$(cd .. && pwd)/shared/data}"
CK=evidence/checkpoints
nohup sgq-bench run --suite cifar10_long --out docs/results/cifar10_long --checkpoint-dir "$CK" --threads 1 \
  > "$LOGS/cifar10_long.log" 2>&1 &
echo $! > "$LOGS/cifar10_long.pid"
nohup sgq-bench run --suite configs/mnist_roar.toml --out docs/results/mnist_roar --checkpoint-dir "$CK" \
  --threads 1 > "$LOGS/mnist_roar.log" 2>&1 &
echo $! > "$LOGS/mnist_roar.pid"
echo "started: cifar10_long (pid $(cat "$LOGS/cifar10_long.pid")), mnist_roar (pid $(cat "$LOGS/mnist_roar.pid")); logs in $LOGS"
