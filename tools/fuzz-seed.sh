#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets (git-ignored) from the test models:
#   fuzz/corpus/gguf_read/   first 64 KiB, cut-down header and a tiny complete file of each model
#   fuzz/corpus/gguf_split/  the tiny file, and the header / tiny file cut into split parts
# from testdata/models/*.gguf and, if fetched (tools/fetch-models.sh), models/*.gguf.
# See fuzz/seed/src/main.rs for what each seed holds. Re-running overwrites the seeds only.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
models=(testdata/models/*.gguf models/*.gguf)
if [ ${#models[@]} -eq 0 ]; then
  echo "error: no models in testdata/models/ or models/ to seed from" >&2
  exit 1
fi
cargo build --release --locked --manifest-path fuzz/Cargo.toml -p flashstream-fuzz-seed
fuzz/target/release/flashstream-fuzz-seed fuzz/corpus/gguf_read fuzz/corpus/gguf_split "${models[@]}"
