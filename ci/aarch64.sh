#!/usr/bin/env bash
# aarch64 checks, run from any directory on an x86-64 Debian/Ubuntu host:
#   1. installs (idempotently) the Rust targets, the cross linker, the arm64 libc and qemu-user;
#   2. clippy for aarch64-unknown-linux-gnu (runtime, all targets, -D warnings);
#   3. `cargo test` of flashstream-formats and flashstream-runtime for aarch64-unknown-linux-gnu,
#      run under qemu-aarch64 (the runner in .cargo/config.toml) with qemu's default CPU model
#      ('max', which has dotprod and i8mm: the run fails if either is not detected, so the
#      `sdot` and `smmla` kernels are really exercised);
#   4. the NEON kernel tests again on a CPU model with dotprod but without i8mm
#      (QEMU_CPU=cortex-a76: the `sdot` tiles without `smmla`), and on one without dotprod
#      (QEMU_CPU=cortex-a53), where the dotprod entry points must fall back to plain NEON
#      (executing `sdot` there would be SIGILL);
#   5. `cargo check` of the library crates for aarch64-apple-ios (no iOS linker here: check only).
# Usage: ci/aarch64.sh          (exit status non-zero on the first failure)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
missing=()
for pkg in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
installed_targets=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu aarch64-apple-ios; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
command -v qemu-aarch64 >/dev/null
command -v aarch64-linux-gnu-gcc >/dev/null

linux=aarch64-unknown-linux-gnu

step "clippy ($linux)"
cargo clippy --target "$linux" -p flashstream-runtime --all-targets -- -D warnings

step "tests under qemu-aarch64 (CPU 'max', with dotprod and i8mm)"
FLASHSTREAM_EXPECT_DOTPROD=1 FLASHSTREAM_EXPECT_I8MM=1 \
    cargo test --target "$linux" -p flashstream-formats -p flashstream-runtime

step "NEON kernel tests under qemu-aarch64 (cortex-a76, dotprod without i8mm)"
QEMU_CPU=cortex-a76 FLASHSTREAM_EXPECT_DOTPROD=1 FLASHSTREAM_EXPECT_I8MM=0 \
    cargo test --target "$linux" -p flashstream-runtime --test neon_kernels

step "NEON kernel tests under qemu-aarch64 (cortex-a53, no dotprod)"
QEMU_CPU=cortex-a53 FLASHSTREAM_EXPECT_DOTPROD=0 FLASHSTREAM_EXPECT_I8MM=0 \
    cargo test --target "$linux" -p flashstream-runtime --test neon_kernels

step "check aarch64-apple-ios"
cargo check --target aarch64-apple-ios -p flashstream-formats -p flashstream-loader \
    -p flashstream-scheduler -p flashstream-runtime -p flashstream

step "aarch64 OK"
