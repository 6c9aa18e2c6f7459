#!/usr/bin/env bash
# The two-terminal set-up in one script: a broker with no local workers, then N attached
# workers; waits for both and prints the summary.
#   scripts/two-terminals.sh [GRAPH] [N]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GRAPH="${1:-examples/pipeline.yaml}"
SUMMARY="${SUMMARY:-summary.json}"
"$HERE/start-broker.sh" "$GRAPH" --summary "$SUMMARY" &
broker=$!
trap 'kill -TERM "$broker" 2>/dev/null || true' INT TERM
"$HERE/start-workers.sh" "${2:-2}"
wait "$broker"
zmpexec report "$SUMMARY"
