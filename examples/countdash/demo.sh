#!/usr/bin/env bash
# The countdash demo: a dev agent with the service mesh, the countdash job, the dashboard's URL.
# Runs until Ctrl-C (or for $DEMO_SECONDS seconds), then stops the job and the agent.
set -euo pipefail
cd "$(dirname "$0")/../.."
YURT=${YURT:-.venv/bin/yurt}
PORT=${YURT_HTTP_PORT:-4646}
export YURT_ADDR="http://127.0.0.1:${PORT}"
LOG=$(mktemp /tmp/yurt-demo-agent.XXXXXX.log)

echo "==> Starting yurt agent -dev-connect (log: $LOG)"
"$YURT" agent -dev-connect -http-port "$PORT" >"$LOG" 2>&1 &
AGENT=$!
cleanup() {
  echo
  echo "==> Stopping the job and the agent"
  "$YURT" job stop -purge -yes countdash >/dev/null 2>&1 || true
  kill -INT "$AGENT" 2>/dev/null || true
  wait "$AGENT" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 60); do
  curl -sf "$YURT_ADDR/v1/agent/health" >/dev/null 2>&1 && break
  kill -0 "$AGENT" 2>/dev/null || { echo "the agent did not start:"; tail -20 "$LOG"; exit 1; }
  sleep 0.5
done

"$YURT" job run examples/countdash/countdash.nomad
echo
"$YURT" job status countdash
echo
echo "==> Waiting for the dashboard to count through the mesh"
for _ in $(seq 1 60); do
  out=$(curl -sf http://127.0.0.1:9002/api/count || true)
  case "$out" in *'"count": -1'*|"") sleep 1 ;; *) break ;; esac
done
for _ in 1 2 3; do echo "    $(curl -sf http://127.0.0.1:9002/api/count)"; sleep 1; done
echo
echo "    Dashboard:  http://127.0.0.1:9002"
echo "    Try:        $YURT intention create -deny count-dashboard count-api   (the count stops)"
echo "                $YURT intention delete count-dashboard count-api          (it comes back)"
echo
if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else echo "Ctrl-C to stop."; wait "$AGENT"; fi
