#!/usr/bin/env bash
# The default run of apps/pfedrlnas beside FedAvg on the largest subnet, same
# settings and seed, one after the other on a fresh local SuperLink. Results go to
# results/default-run/{pfedrlnas,fedavg-largest}/ with the log of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
FLWR_BIN=${FLWR_BIN:-flwr}
out="$PWD/results/default-run"
mkdir -p "$out"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME=${FLWR_HOME:-$(mktemp -d)}
trap 'pkill -f "$FLWR_HOME/local-superlink" || true' EXIT
for method in pfedrlnas fedavg-largest; do
  rm -rf "$out/$method"
  start=$(date +%s)
  "$FLWR_BIN" run apps/pfedrlnas --stream \
    --federation-config "num-supernodes=10 client-resources-num-cpus=1" \
    --run-config "method='$method' results-dir='$out/$method'" 2>&1 | tee "$out/$method.log"
  echo "wall-seconds $method $(( $(date +%s) - start ))" | tee -a "$out/$method.log"
done
