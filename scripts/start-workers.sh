#!/usr/bin/env bash
# Attach workers to a broker started by start-broker.sh (terminal 2). Waits (with backoff)
# until the broker is up, exits when its run ends.
#   scripts/start-workers.sh [N]
# Environment: REPO (default zmpexec-repo), RUN (default main), WAIT (seconds, default 60).
set -euo pipefail
RUN_DIR="${REPO:-zmpexec-repo}/runs/${RUN:-main}"
deadline=$(( $(date +%s) + ${WAIT:-60} ))
until [ -s "$RUN_DIR/endpoint" ]; do      # the broker writes its endpoint when it is up
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "no broker recorded in $RUN_DIR after ${WAIT:-60}s" >&2
    exit 1
  fi
  sleep 0.2
done
exec zmpexec worker --run-dir "$RUN_DIR" -j "${1:-2}" --wait "${WAIT:-60}"
