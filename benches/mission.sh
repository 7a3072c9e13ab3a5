#!/usr/bin/env bash
# The mission's scale, once (not in CI): a dense model of at least 100B parameters (Q4_0, over
# 50 GiB on disk) run under a 12 GiB budget.
#   benches/mission.sh [DIR]    (DIR: where the model goes; default target/mission; needs ~60 GB free)
# Environment: MEM (default 12GiB), N (tokens to generate, default 4), PROMPT (prompt length,
# default 8), THREADS (default: all cores), KEEP=0 deletes the model afterwards.
# Writes DIR/plan.json and DIR/bench.json and prints both; the model is made once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/mission}
mem=${MEM:-12GiB}
n=${N:-4}
prompt=${PROMPT:-8}
mkdir -p "$dir"
model="$dir/dense-101b-q4_0.gguf"
bin=target/release/flashstream
cargo build --release --locked -p flashstream-tools
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")

# 8192 hidden, 28672 FFN, 64 heads (8 KV heads), 118 layers: 101e9 parameters, ~53 GiB as Q4_0.
if [ ! -f "$model" ] || [ ! -f "$model.json" ]; then
  need=$((57 * 1024 * 1024))  # KiB: the model is ~57.2e9 bytes
  avail=$(df -Pk "$dir" | awk 'NR==2{print $4}')
  if [ "$avail" -lt "$need" ]; then
    echo "error: $dir has $((avail / 1024 / 1024)) GiB free; the model needs about 54 GiB (57 GB) and some room" >&2
    exit 1
  fi
  echo "writing $model (about 57 GB; several minutes)..."
  "$bin" mkmodel dense "$model" --size 53GiB --embd 8192 --layers 118 --type q4_0 --seed 100 --json > "$model.json.tmp"
  mv "$model.json.tmp" "$model.json"
fi
echo "model:"; cat "$model.json"; echo
"$bin" plan "$model" --mem "$mem" --ctx $((prompt + n)) "${threads[@]}" > "$dir/plan.txt"
"$bin" plan "$model" --mem "$mem" --ctx $((prompt + n)) "${threads[@]}" --json --bandwidth 1 > "$dir/plan.json"
cat "$dir/plan.txt"; echo
echo "bench (--mem $mem, prompt $prompt, $n tokens)..."
"$bin" bench "$model" --mem "$mem" -n "$n" --prompt-len "$prompt" "${threads[@]}" --json | tee "$dir/bench.json"
python3 - "$dir/bench.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
gib = 1 << 30
print(f"\nparams file {d['weight_bytes']/gib:.1f} GiB under a {d['budget_bytes']/gib:.1f} GiB budget; "
      f"peak RSS {d['peak_memory_bytes']/gib:.2f} GiB")
print(f"decode {d['decode_tokens_per_s']:.4f} tok/s, theoretical {d['theoretical_tokens_per_s']:.4f} "
      f"({d['decode_vs_theoretical']:.2f}x); io_efficiency {d['io_efficiency']:.2f}; "
      f"{d['bytes_read_per_token']/gib:.1f} GiB read per token at {d['read_gbps']:.2f} GB/s "
      f"(device {d['device_read_gbps']:.2f} GB/s)")
EOF
if [ "${KEEP:-1}" != 1 ]; then rm -f "$model" "$model.json"; fi
