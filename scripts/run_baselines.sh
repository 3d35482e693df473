#!/usr/bin/env bash
# Table 2 in small: every personalised-FL baseline (apps/baselines) and PerFedRLNAS
# (apps/pfedrlnas) with the same clients, data, rounds, sampling and seed, one after the
# other through `flwr run` on a private local SuperLink (temporary FLWR_HOME, free ports),
# which is stopped by pid at the end. Results: results/baselines/<method>/ and <method>.log;
# then scripts/baselines_table.py writes results/baselines/table.md.
#   scripts/run_baselines.sh [method ...]   (default: all six)
set -euo pipefail
cd "$(dirname "$0")/.."
FLWR_BIN=${FLWR_BIN:-flwr}
PYTHON=${PYTHON:-python}
out="$PWD/results/baselines"
mkdir -p "$out"
# The same settings for every method.
COMMON="num-server-rounds=8 num-clients=10 clients-per-round=4 local-epochs=1 lr=0.05 batch-size=32 seed=0 dirichlet-alpha=0.5"
FEDERATION="num-supernodes=10 client-resources-num-cpus=1"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
FLWR_HOME=$(mktemp -d)
export FLWR_HOME
printf '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n' >"$FLWR_HOME/config.toml"
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=$(free_port)
FLWR_LOCAL_CONTROL_API_PORT=$(free_port)
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT FLWR_LOCAL_CONTROL_API_PORT
stop_superlink() {
  # Only the processes that carry this script's FLWR_HOME, by pid; Ray actors may need SIGKILL.
  for sig in TERM KILL; do
    for env in /proc/[0-9]*/environ; do
      pid=${env#/proc/}; pid=${pid%/environ}
      [ "$pid" = "$$" ] && continue
      if tr '\0' '\n' 2>/dev/null <"$env" | grep -qx "FLWR_HOME=$FLWR_HOME"; then
        kill -s "$sig" "$pid" 2>/dev/null || true
      fi
    done 2>/dev/null
    sleep 3
  done
}
trap stop_superlink EXIT
trap 'exit 143' INT TERM
methods=("$@")
[ ${#methods[@]} -eq 0 ] && methods=(pfedrlnas fedrep fedavg-ft fedbabu local fedtp)
for method in "${methods[@]}"; do
  rm -rf "${out:?}/$method"
  if [ "$method" = pfedrlnas ]; then
    app=apps/pfedrlnas; extra="method='pfedrlnas'"
  else
    # finetune-epochs=5 (not the default 10) keeps the final fine-tuning of 10 clients short on CPU.
    app=apps/baselines; extra="method='$method' finetune-epochs=5 head-epochs=1"
  fi
  start=$(date +%s)
  "$FLWR_BIN" run "$app" --stream --federation-config "$FEDERATION" \
    --run-config "$COMMON $extra results-dir='$out/$method'" 2>&1 | tee "$out/$method.log"
  echo "wall-seconds $method $(($(date +%s) - start))" | tee -a "$out/$method.log"
done
"$PYTHON" scripts/baselines_table.py "$out"
