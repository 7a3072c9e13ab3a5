#!/usr/bin/env bash
# Fuzzes the GGUF reader: tools/fuzz.sh [SECONDS] [TARGET]
#   SECONDS  how long to run (default 600)
#   TARGET   gguf_read (default: one file), gguf_split (a split model's parts, concatenated) or
#            gguf_struct (the input is a recipe for a file: keys, numbers, names, shapes)
# Installs cargo-fuzz if missing, seeds the corpus (tools/fuzz-seed.sh), then runs libFuzzer in
# one process on one core (no -fork/-jobs). Findings go to fuzz/artifacts/TARGET/ and the log of
# the run to fuzz/artifacts/TARGET/last-run.log (both git-ignored).
#
# Works on the stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer=address and
# friends); RUSTC_BOOTSTRAP=1 makes stable rustc accept them. The address sanitizer runtime
# ships with stable x86_64 Linux toolchains; FUZZ_SANITIZER=none runs without it (faster, still
# catches panics, overflow and allocation limits).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
target=${2:-gguf_read}
sanitizer=${FUZZ_SANITIZER:-address}
case $target in
gguf_read | gguf_split) # file bytes: GGUF tokens help; the seeds are at most 64 KiB
  opts=(-dict=fuzz/gguf.dict -max_len=131072) ;;
gguf_struct) # recipes: small, and not GGUF bytes
  opts=(-max_len=4096) ;;
*)
  echo "error: unknown target '$target' (gguf_read, gguf_split or gguf_struct)" >&2
  exit 2
  ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
tools/fuzz-seed.sh >/dev/null
mkdir -p "fuzz/corpus/$target"

export RUSTC_BOOTSTRAP=1
mkdir -p "fuzz/artifacts/$target"
log="fuzz/artifacts/$target/last-run.log"
set +e
# -O: release with the fuzz workspace's profile (overflow checks and debug assertions on).
# libFuzzer: the options above; a 2 GiB memory limit (an allocation above it is a finding);
# 10 s per input is a hang.
cargo fuzz run -O --sanitizer "$sanitizer" "$target" "fuzz/corpus/$target" -- \
  "${opts[@]}" -max_total_time="$secs" \
  -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
grep -aE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
if [ "$rc" -ne 0 ]; then
  echo "fuzzing found something (exit $rc); inputs in fuzz/artifacts/$target/." >&2
  echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -O $target fuzz/artifacts/$target/FILE" >&2
  echo "minimise:  RUSTC_BOOTSTRAP=1 cargo fuzz tmin -O $target fuzz/artifacts/$target/FILE" >&2
fi
exit "$rc"
