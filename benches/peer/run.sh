#!/usr/bin/env bash
# flashstream vs llama.cpp under the same memory cap. See benches/peer/README.md.
#   sudo benches/peer/run.sh              # the full benchmark (~15-20 min on 2 cores, once built)
#   sudo benches/peer/run.sh --self-test  # harness logic with fake engines (~1 min)
#   benches/peer/run.sh --dry-run         # the plan; no root needed
#   benches/peer/run.sh --help
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || { echo "peer: error: $PY not found (Python 3.9+ needed)" >&2; exit 2; }
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' ||
    { echo "peer: error: $PY is older than 3.9" >&2; exit 2; }
export PYTHONDONTWRITEBYTECODE=1
exec "$PY" "$here/peer.py" "$@"
