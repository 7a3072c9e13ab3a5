#!/usr/bin/env python3
"""Write testdata/golden/dequant_mxfp4.jsonl: MXFP4 rows and gguf-py's dequantization of them.

`dequant.jsonl` (from ../shared/golden) has no MXFP4 tensor, so this script makes the MXFP4
reference the same way: gguf-py (PyPI `gguf` 0.19.0, `gguf.quants.dequantize`) decodes

- rows of the MXFP4 expert tensors of the random gpt-oss model
  (`../shared/models/rand-gptoss-mxfp4.gguf`, written by llama.cpp's converter): the first two
  rows of expert 0 and the last row of the last expert of a gate and a down tensor;
- one synthetic row of 256 blocks, block `i` with exponent byte `i` (so every E8M0 value,
  the subnormal 0 and 1 and the 255 that ggml reads as 2^127 included) and quant bytes that
  put every 4-bit code in both nibbles of every block.

Each line: {"source", "tensor", "type": "MXFP4", "row_len", "rows": [row indices],
"hex": the rows' raw bytes, "f32_hex": [per row, the little-endian f32 bytes of gguf-py's
values]}. Every MXFP4 weight is a small integer times a power of two, so gguf-py's f32 result is
exact (±inf where 12 · 2^127 overflows) and the test compares bit for bit.

Requires numpy and the `gguf` package (pip install gguf==0.19.0 numpy pyyaml).
Usage: tools/mxfp4-golden.py [--model PATH] [--out PATH]
"""

import argparse
import importlib.metadata
import json
import os

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QK = 32
BLOCK_BYTES = 17


def record(source, tensor, rows, raw):
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    with np.errstate(over="ignore"):  # e = 255: 12 * 2^127 is inf, in ggml as here
        vals = dequantize(raw, GGMLQuantizationType.MXFP4).astype(np.float32)
    row_len = raw.shape[-1] // BLOCK_BYTES * QK
    assert vals.shape == (len(rows), row_len), vals.shape
    return {
        "source": source,
        "tensor": tensor,
        "type": "MXFP4",
        "row_len": row_len,
        "rows": rows,
        "hex": raw.tobytes().hex(),
        # Exact f32 bits (little-endian), as e = 255 makes the largest codes overflow to ±inf,
        # which JSON numbers cannot hold.
        "f32_hex": [row.astype("<f4").tobytes().hex() for row in vals],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="default: rand-gptoss-mxfp4.gguf in ../shared/models")
    ap.add_argument("--out", default=os.path.join(ROOT, "testdata/golden/dequant_mxfp4.jsonl"))
    args = ap.parse_args()
    assert importlib.metadata.version("gguf") == "0.19.0", "use gguf 0.19.0"

    if args.model is None:
        # ../shared next to the checkout (or next to the folder of worktrees holding it).
        for up in ["..", "../.."]:
            p = os.path.join(ROOT, up, "shared/models/rand-gptoss-mxfp4.gguf")
            if os.path.exists(p):
                args.model = p
                break
        else:
            raise SystemExit("rand-gptoss-mxfp4.gguf not found; pass --model")
    out = []
    reader = GGUFReader(args.model)
    source = os.path.basename(args.model)
    for name in ["blk.0.ffn_gate_exps.weight", "blk.3.ffn_down_exps.weight"]:
        t = next(t for t in reader.tensors if t.name == name)
        assert t.tensor_type == GGMLQuantizationType.MXFP4, t.tensor_type
        data = np.asarray(t.data, dtype=np.uint8)
        flat = data.reshape(-1, data.shape[-1])  # one row of the row length per line
        n_rows = flat.shape[0]
        picks = [0, 1, n_rows - 1]
        out.append(record(source, name, picks, flat[picks]))

    # Every exponent byte, every code in both nibbles.
    blocks = np.zeros((256, BLOCK_BYTES), dtype=np.uint8)
    for i in range(256):
        blocks[i, 0] = i
        for j in range(16):
            lo = (j + i) % 16
            hi = (15 - j + 3 * i) % 16
            blocks[i, 1 + j] = lo | (hi << 4)
    out.append(record("synthetic", "every exponent byte", [0], blocks.reshape(1, -1)))

    with open(args.out, "w") as f:
        for rec in out:
            f.write(json.dumps(rec) + "\n")
    print(f"wrote {len(out)} records to {args.out}")


if __name__ == "__main__":
    main()
