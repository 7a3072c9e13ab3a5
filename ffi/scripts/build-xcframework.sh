#!/usr/bin/env bash
# Builds FlashStream.xcframework (static libflashstream.a + flashstream.h + module.modulemap)
# for iOS devices (aarch64-apple-ios), the iOS simulator (aarch64-apple-ios-sim and
# x86_64-apple-ios, merged with lipo) and macOS (aarch64-apple-darwin and x86_64-apple-darwin).
#
# NEEDS macOS WITH XCODE (xcodebuild, lipo and the Apple SDKs): it cannot run on the Linux CI
# machine of this repository, and has not been run there. CI only type-checks the crate for
# aarch64-apple-ios (`cargo check -p flashstream-ffi --target aarch64-apple-ios`, ci/ffi.sh).
#
# Usage: ffi/scripts/build-xcframework.sh [OUT_DIR]    (default: target/xcframework)
# In Swift: add the XCFramework to the app target, then `import FlashStream`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:-target/xcframework}
command -v xcodebuild >/dev/null || { echo "error: xcodebuild not found: this script needs macOS with Xcode" >&2; exit 1; }

targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
for t in "${targets[@]}"; do
    rustup target add "$t" >/dev/null
    cargo build --release -p flashstream-ffi --target "$t"
done

rm -rf "$out" && mkdir -p "$out/headers" "$out/ios-sim" "$out/macos"
cp ffi/include/flashstream.h ffi/include/module.modulemap "$out/headers/"
lipo -create target/aarch64-apple-ios-sim/release/libflashstream.a \
    target/x86_64-apple-ios/release/libflashstream.a -output "$out/ios-sim/libflashstream.a"
lipo -create target/aarch64-apple-darwin/release/libflashstream.a \
    target/x86_64-apple-darwin/release/libflashstream.a -output "$out/macos/libflashstream.a"

xcodebuild -create-xcframework \
    -library target/aarch64-apple-ios/release/libflashstream.a -headers "$out/headers" \
    -library "$out/ios-sim/libflashstream.a" -headers "$out/headers" \
    -library "$out/macos/libflashstream.a" -headers "$out/headers" \
    -output "$out/FlashStream.xcframework"
echo "built $out/FlashStream.xcframework"
