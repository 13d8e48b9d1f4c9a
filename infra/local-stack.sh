#!/usr/bin/env bash
# Start medanon's operational stack on one machine, without Docker:
#   a Prefect server (API + UI) on 127.0.0.1:4200, a process work pool and worker,
#   and medanon's deployments registered from deployments/prefect.yaml.
# Usage: bash infra/local-stack.sh            (Ctrl-C stops everything)
# Env:   MEDANON_KEY or a Prefect Secret block "medanon-key" (see README), PREFECT_PORT (default 4200)
set -euo pipefail
cd "$(dirname "$0")/.."
bash quickstart.sh install  # creates .venv with medanon on first use
PORT="${PREFECT_PORT:-4200}"
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MEDANON_HOME="$(pwd)"
LOGS="${MEDANON_LOGS:-$HOME/.medanon/logs}"; mkdir -p "$LOGS"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
.venv/bin/prefect server start --host 127.0.0.1 --port "$PORT" >"$LOGS/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
  sleep 1
done
.venv/bin/prefect work-pool inspect medanon >/dev/null 2>&1 || .venv/bin/prefect work-pool create medanon --type process
.venv/bin/prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all
.venv/bin/prefect worker start --pool medanon >"$LOGS/worker.log" 2>&1 &
pids+=($!)
echo "Prefect UI: http://127.0.0.1:${PORT}  (logs in $LOGS; Ctrl-C to stop)"
wait
