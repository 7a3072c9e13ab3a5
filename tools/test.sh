#!/usr/bin/env bash
# The test suite: formatting, lints, the x86-64 tests (with the real models fetched from PyPI),
# and the kernel and format tests for aarch64 under qemu plus an iOS type-check.
#   tools/test.sh            everything
#   tools/test.sh --quick    only `cargo test` on this machine
# With CI=true every part must run (missing models or cross tools are errors, not skips).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

step() { printf '\n==> %s\n' "$*"; }

if [ $quick = 0 ]; then
  step "rustfmt"
  cargo fmt --all -- --check
  step "clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

step "test models"
if ! tools/fetch-models.sh; then
  if [ "${CI:-}" = "true" ]; then
    echo "error: the real test models are required in CI" >&2
    exit 1
  fi
  echo "warning: real models unavailable; tests that need them will say they were skipped" >&2
fi

[ $quick = 1 ] || { step "tokenizer zoo vocab files"; bash ci/zoo.sh; }

step "cargo test (x86-64)"
cargo test --workspace --locked

if [ $quick = 0 ]; then
  step "aarch64 (qemu) and iOS"
  bash ci/aarch64.sh
  step "serve: openai client, load test in a memory cgroup, chat page in chromium"
  bash ci/serve.sh
  step "C ABI, Python binding, Swift module map"; bash ci/ffi.sh
fi
