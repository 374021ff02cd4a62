#!/usr/bin/env bash
# Installs what davit needs, builds it, starts `davit dev` and runs the example jobs.
# Ctrl-C stops davit and every task it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

cargo build --release --locked -p davit
davit=target/release/davit
export DAVIT_ADDR=http://127.0.0.1:7646

"$davit" dev --bind 127.0.0.1:7646 &
dev_pid=$!
trap 'kill -INT $dev_pid 2>/dev/null; wait $dev_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  "$davit" node ls >/dev/null 2>&1 && [ "$("$davit" node ls -o json | grep -c '"ready"')" -ge 1 ] && break
  sleep 0.1
done

for job in examples/*.yaml; do
  echo; echo "\$ davit job run $job"
  "$davit" job run "$job"
done
echo; echo "\$ davit node ls"; "$davit" node ls
echo; echo "\$ davit job status"; "$davit" job status
echo
echo "davit dev is running at $DAVIT_ADDR. Try: $davit job status hello; $davit alloc logs -f <alloc-id>"
echo "Press Ctrl-C to stop."
wait $dev_pid
