#!/usr/bin/env python3
"""Extract the raw bytes behind testdata/golden/dequant.jsonl into a small test file.

dequant.jsonl holds, for one tensor of each quant type in several models, the first two rows
dequantized by gguf-py. The kernels' tests must run on a fresh clone without the big model
files, so this script copies the *quantized* bytes of exactly those rows out of the model
files into testdata/golden/dequant_rows.jsonl (one JSON object a line, bytes as hex):

    {"model": ..., "tensor": ..., "type": "Q4_K", "row_len": 1024, "rows": 2,
     "row_bytes": 576, "hex": "..."}

Before writing, it dequantizes the extracted bytes with gguf-py and checks them against the
golden values (relative 1e-6), so a wrong offset cannot slip through.

Requires the PyPI package `gguf` (pip install gguf==0.19.0) and numpy.

Usage: tools/extract-golden-rows.py [--models DIR ...] [--golden FILE] [--out FILE]
Model files are looked up in each --models directory in turn (default: testdata/models, then
models/, relative to the repository root: where the project keeps the small random models and
where tools/fetch-models.sh puts the downloaded ones).
"""

import argparse
import importlib.metadata
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, GGML_QUANT_SIZES
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_model(name, dirs):
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    sys.exit(f"model file {name} not found in any of: {', '.join(dirs)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", action="append", help="directory holding model files")
    ap.add_argument("--golden", default=os.path.join(ROOT, "testdata/golden/dequant.jsonl"))
    ap.add_argument("--out", default=os.path.join(ROOT, "testdata/golden/dequant_rows.jsonl"))
    args = ap.parse_args()
    dirs = args.models or [
        os.path.join(ROOT, "testdata/models"),
        os.path.join(ROOT, "models"),
    ]

    readers = {}
    out_lines = []
    with open(args.golden) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for rec in records:
        model, tname, tyname = rec["model"], rec["tensor"], rec["type"]
        if model not in readers:
            readers[model] = GGUFReader(find_model(model, dirs))
        reader = readers[model]
        tensor = next((t for t in reader.tensors if t.name == tname), None)
        if tensor is None:
            sys.exit(f"{model}: no tensor {tname}")
        qtype = GGMLQuantizationType(tensor.tensor_type)
        if qtype.name != tyname:
            sys.exit(f"{model}/{tname}: type {qtype.name}, golden says {tyname}")
        row_len = int(rec["shape"][0])
        if [int(x) for x in tensor.shape] != [int(x) for x in rec["shape"]]:
            sys.exit(f"{model}/{tname}: shape {list(tensor.shape)}, golden says {rec['shape']}")
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        assert row_len % block_size == 0
        row_bytes = row_len // block_size * type_size
        nrows = len(rec["rows"])
        start = int(tensor.data_offset)
        raw = np.asarray(reader.data[start:start + nrows * row_bytes], dtype=np.uint8).copy()
        assert raw.size == nrows * row_bytes

        # Check against the golden values with gguf-py's own decoder.
        values = dequantize(raw, qtype).reshape(-1).astype(np.float64)
        golden = np.array([v for row in rec["rows"] for v in row], dtype=np.float64)
        if values.shape != golden.shape or not np.all(
            np.abs(values - golden) <= 1e-6 * np.abs(golden) + 1e-12
        ):
            sys.exit(f"{model}/{tname}: extracted bytes do not dequantize to the golden rows")

        out_lines.append(json.dumps({
            "model": model,
            "tensor": tname,
            "type": tyname,
            "row_len": row_len,
            "rows": nrows,
            "row_bytes": row_bytes,
            "hex": raw.tobytes().hex(),
        }))
        print(f"{model:40} {tname:28} {tyname:5} {nrows} x {row_bytes} bytes", file=sys.stderr)

    with open(args.out, "w") as f:
        f.write("\n".join(out_lines) + "\n")
    print(f"wrote {args.out} ({len(out_lines)} tensors, gguf-py {importlib.metadata.version('gguf')})", file=sys.stderr)


if __name__ == "__main__":
    main()
