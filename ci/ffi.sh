#!/usr/bin/env bash
# The C ABI, the Python binding and the Swift module map (issue 13), from any directory:
#   1. the checked-in ffi/include/flashstream.h equals a fresh cbindgen generation;
#   2. ffi/examples/generate.c builds with -Wall -Werror and prints exactly what
#      `flashstream run MODEL -p PROMPT -n N --temp 0 --mem MEM` prints;
#   3. ffi/tests/api.c (every function with NULL/freed handles and bad inputs, cancellation
#      from another thread) passes, also under valgrind (no invalid access; ~30 s);
#   4. clang -fmodules accepts ffi/include/module.modulemap (`import FlashStream`);
#   5. pytest over bindings/python (installed with pip into a venv under target/);
#   6. cargo check of flashstream-ffi for aarch64-apple-ios and aarch64-linux-android.
# Installs what it needs (gcc, clang, valgrind, python3-venv; the Rust targets) idempotently.
# With CI=true a missing tool is an error, never a skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

ci=0
[ "${CI:-}" = "true" ] && ci=1

step "tools"
missing=()
for pkg in gcc clang valgrind python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
for t in gcc clang valgrind python3; do
    command -v "$t" >/dev/null || { echo "error: $t is missing" >&2; exit 1; }
done
installed_targets=$(rustup target list --installed)
for t in aarch64-apple-ios aarch64-linux-android; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

step "header drift (cbindgen)"
cargo test --locked -p flashstream-ffi --test header

step "build libflashstream and the CLI"
cargo build --locked --release -p flashstream-ffi -p flashstream-tools
lib=target/release
out=target/ffi-ci
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step "generate.c against flashstream run"
gcc -Wall -Werror -I ffi/include ffi/examples/generate.c -L "$lib" -lflashstream -o "$out/generate"
check_generate() { # MODEL PROMPT N MEM
    "$out/generate" "$1" "$2" "$3" "$4" >"$out/c.txt"
    "$lib/flashstream" run "$1" -p "$2" -n "$3" --temp 0 --mem "$4" >"$out/cli.txt" 2>/dev/null
    if ! cmp -s "$out/c.txt" "$out/cli.txt"; then
        echo "generate.c and flashstream run differ on $1:" >&2
        diff <(cat "$out/c.txt"; echo) <(cat "$out/cli.txt"; echo) >&2 || true
        exit 1
    fi
    printf '%s: %s\n' "$(basename "$1")" "$(head -c 200 "$out/c.txt")"
}
check_generate testdata/models/rand-llama-q8_0.gguf "Once upon a time" 16 64MiB
smol=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$smol" ]; then
    check_generate "$smol" "The capital of France is" 24 160MiB
elif [ $ci = 1 ]; then
    echo "error: $smol is missing (tools/fetch-models.sh)" >&2
    exit 1
else
    echo "skipped: $smol is missing (tools/fetch-models.sh)" >&2
fi

step "C API test (null/freed handles, bad inputs), plain and under valgrind"
gcc -Wall -Werror -g -pthread -I ffi/include ffi/tests/api.c -L "$lib" -lflashstream -o "$out/api"
"$out/api" testdata/models/rand-llama-q8_0.gguf
valgrind --error-exitcode=99 --errors-for-leak-kinds=none --quiet \
    "$out/api" testdata/models/rand-llama-q8_0.gguf

step "module map (clang -fmodules)"
clang -fmodules -fmodules-cache-path="$out/modcache" -fsyntax-only -I ffi/include \
    ffi/tests/modulemap.c

step "Python binding (pytest)"
venv=target/pyvenv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import pytest" 2>/dev/null || "$venv/bin/pip" install -q pytest
"$venv/bin/pip" install -q --force-reinstall --no-deps ./bindings/python
# The ~1.3 GB model of the set_budget test is made once under target/ffi-ci/ (mkmodel, ~30 s).
FLASHSTREAM_LIB="$PWD/$lib/libflashstream.so" FLASHSTREAM_BIN="$PWD/$lib/flashstream" \
    "$venv/bin/python" -m pytest -q -s bindings/python/tests

step "cargo check for iOS and Android"
cargo check --locked -p flashstream-ffi --target aarch64-apple-ios
cargo check --locked -p flashstream-ffi --target aarch64-linux-android

step "ffi OK"
