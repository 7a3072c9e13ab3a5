#!/usr/bin/env bash
# Fetches the 17 vocab-only GGUFs of llama.cpp's tokenizer tests (testdata/zoo/vocab.sha256)
# into models/zoo (git-ignored) for the tokenizer-zoo test (tools/tests/zoo.rs), which
# `cargo test` then runs. They come from the PyPI sdist of llama-cpp-python 0.3.36
# (vendor/llama.cpp/models/, ~70 MB in all, too large to commit). Idempotent: files already
# present with the right hash are kept. With CI=true a failure is an error; otherwise a warning
# (the test then says it skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
V=0.3.36
SDIST_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
dest=${FLASHSTREAM_ZOO_DIR:-models/zoo}
PY=${PYTHON:-python3}
sums=$PWD/testdata/zoo/vocab.sha256

fail() {
  echo "error: $*" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  echo "warning: the tokenizer-zoo test will skip" >&2
  exit 0
}

mkdir -p "$dest"
if (cd "$dest" && sha256sum --quiet -c "$sums" >/dev/null 2>&1); then
  echo "zoo vocab files present in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-binary for the package only: its build dependencies (needed for pip to read the
# sdist's metadata) come as wheels.
"$PY" -m pip download --quiet --no-deps --disable-pip-version-check \
  --no-binary llama-cpp-python "llama-cpp-python==$V" -d "$tmp" 2>"$tmp/pip.err" ||
  { tail -n 5 "$tmp/pip.err" >&2; fail "could not download llama-cpp-python==$V from PyPI"; }
tarball=$tmp/llama_cpp_python-$V.tar.gz
[ "$(sha256sum "$tarball" | cut -d' ' -f1)" = "$SDIST_SHA" ] || fail "$tarball: unexpected sha256"
members=$(cut -d' ' -f3 "$sums" | sed "s|^|llama_cpp_python-$V/vendor/llama.cpp/models/|")
# shellcheck disable=SC2086
tar xzf "$tarball" -C "$tmp" $members || fail "the sdist lacks the vocab files"
cp "$tmp/llama_cpp_python-$V/vendor/llama.cpp/models/"ggml-vocab-*.gguf "$dest/"
(cd "$dest" && sha256sum --quiet -c "$sums") || fail "vocab files in $dest do not match $sums"
echo "zoo vocab files fetched into $dest"
