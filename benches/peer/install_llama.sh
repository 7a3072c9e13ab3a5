#!/usr/bin/env bash
# Install llama.cpp (via its PyPI bindings, built from source) into a private venv, once.
# Usage: install_llama.sh [VENV]   (default ${FLASHSTREAM_PEER_VENV:-$HOME/.cache/flashstream/peer-venv})
# Reuses a venv that already has the pinned version. CPU only, built for this CPU (GGML_NATIVE).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
VENV="${1:-${FLASHSTREAM_PEER_VENV:-$HOME/.cache/flashstream/peer-venv}}"
PY="${PYTHON:-python3}"

have_version() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$VERSION" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("llama_cpp_python") == sys.argv[1] else 1)
PYEOF
}

if have_version; then
    echo "llama-cpp-python $VERSION already in $VENV" >&2
    exit 0
fi

echo "installing llama-cpp-python==$VERSION into $VENV (builds llama.cpp from source; takes a while)" >&2
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# cmake and ninja from PyPI when the system has none (the venv's bin goes first on PATH).
TOOLS=()
command -v cmake >/dev/null 2>&1 || TOOLS+=(cmake)
command -v ninja >/dev/null 2>&1 || TOOLS+=(ninja)
"$VENV/bin/python" -m pip install --quiet --upgrade pip "${TOOLS[@]}"
export PATH="$VENV/bin:$PATH"
export CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
echo "CMAKE_ARGS=$CMAKE_ARGS" >&2
nice -n "${PEER_NICE:-10}" "$VENV/bin/python" -m pip install --no-cache-dir --verbose \
    "llama-cpp-python==$VERSION" >"$VENV.build.log" 2>&1 || {
    echo "error: building llama-cpp-python==$VERSION failed; see $VENV.build.log (last lines below)" >&2
    tail -n 30 "$VENV.build.log" >&2
    exit 1
}
have_version || { echo "error: llama-cpp-python==$VERSION not importable after install; see $VENV.build.log" >&2; exit 1; }
echo "llama-cpp-python $VERSION installed in $VENV (build log: $VENV.build.log)" >&2
