#!/usr/bin/env bash
# Serve a graph and wait for workers (terminal 1 of the two-terminal set-up).
#   scripts/start-broker.sh [GRAPH] [extra zmpexec broker options...]
# Environment: ENDPOINT (default: a private ipc socket), LOCAL (local workers, default 0),
#              REPO (default zmpexec-repo), RUN (default main).
set -euo pipefail
GRAPH="${1:-examples/pipeline.yaml}"
shift || true
if [ -z "${ENDPOINT:-}" ]; then
  SOCK_DIR="${TMPDIR:-/tmp}/zmpexec-$(id -u)"
  mkdir -p -m 700 "$SOCK_DIR"
  ENDPOINT="ipc://$SOCK_DIR/broker.sock"
fi
exec zmpexec broker "$GRAPH" --endpoint "$ENDPOINT" -j "${LOCAL:-0}" \
  --repo "${REPO:-zmpexec-repo}" --run "${RUN:-main}" "$@"
