#!/usr/bin/env python3
"""A stand-in for the `flashstream` binary, for testing the peer harness only.

It accepts the command lines the harness sends (`run`, `bench`, `mkmodel`, `--version`) and
prints JSON of the same shape as the real CLI, with made-up speeds. `run` streams the file
through a buffer no larger than --mem (so it stays under the cgroup cap); `mkmodel` writes
pseudo-random bytes of the requested size (not a GGUF: only the harness's own logic can use it).
Never use its figures for anything.
"""

import argparse
import json
import os
import random
import sys
import time

UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
         "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9}


def parse_size(s):
    s = s.strip().lower()
    i = len(s)
    while i and not (s[i - 1].isdigit() or s[i - 1] == "."):
        i -= 1
    num, unit = s[:i], s[i:].strip()
    if not num or unit not in UNITS:
        sys.exit(f"fake flashstream: bad size {s!r}")
    return int(float(num) * UNITS[unit])


def stream(path, mem, passes):
    chunk = max(min(mem // 4, 8 << 20), 1 << 16)
    buf = bytearray(chunk)
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        for _ in range(passes):
            off = 0
            while True:
                n = os.preadv(fd, [buf], off)
                if n <= 0:
                    break
                off += n
                total += n
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return total


def cmd_run(a):
    prompt = list(a.p.encode("utf-8"))
    mem = parse_size(a.mem) if a.mem else 64 << 20
    t0 = time.perf_counter()
    stream(a.model, mem, 1)
    t1 = time.perf_counter()
    read = stream(a.model, mem, max(a.n - 1, 0))
    t2 = time.perf_counter()
    tokens = [(i * 7 + 3) % 256 for i in range(a.n)]
    stats = {
        "prompt_tokens": len(prompt),
        "generated_tokens": a.n,
        "prompt_tokens_per_s": len(prompt) / max(t1 - t0, 1e-9),
        "decode_tokens_per_s": (a.n - 1) / max(t2 - t1, 1e-9),
        "time_to_first_token_s": t1 - t0,
    }
    if a.mem:
        stats.update({"peak_memory_bytes": mem, "bytes_read_per_token": read // max(a.n - 1, 1),
                      "io_efficiency": 0.5})
    print(json.dumps({"prompt_tokens": prompt, "tokens": tokens, "text": bytes(tokens).decode("latin-1"),
                      "stats": stats}))


def cmd_bench(a):
    size = os.path.getsize(a.model)
    t0 = time.perf_counter()
    stream(a.model, parse_size(a.mem), 1)
    gbps = size / max(time.perf_counter() - t0, 1e-9) / 1e9
    print(json.dumps({"device_read_gbps": gbps, "prompt_tokens_per_s": 1.0, "decode_tokens_per_s": 1.0,
                      "bytes_read_per_token": size, "read_gbps": gbps, "io_efficiency": 1.0,
                      "stall_fraction": 0.5, "peak_memory_bytes": parse_size(a.mem),
                      "theoretical_tokens_per_s": gbps * 1e9 / size}))


def cmd_mkmodel(a):
    if a.kind == "upcycle":
        src, out = a.args
        size = os.path.getsize(src) * a.experts // 2
    else:
        (out,) = a.args
        size = parse_size(a.size)
    rng = random.Random(a.seed)
    with open(out, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


def main():
    if sys.argv[1:] == ["--version"]:
        print("flashstream 0.0.0-fake")
        return
    ap = argparse.ArgumentParser(prog="fake-flashstream")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("model")
    r.add_argument("-p", required=True)
    r.add_argument("-n", type=int, required=True)
    r.add_argument("--temp", type=float, default=0)
    r.add_argument("--ignore-eos", action="store_true")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--mem")
    r.add_argument("--json", action="store_true")
    b = sub.add_parser("bench")
    b.add_argument("model")
    b.add_argument("--mem", required=True)
    b.add_argument("-n", type=int, required=True)
    b.add_argument("--prompt-len", type=int, required=True)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--json", action="store_true")
    m = sub.add_parser("mkmodel")
    m.add_argument("kind", choices=["dense", "moe", "upcycle"])
    m.add_argument("args", nargs="+")
    m.add_argument("--size")
    m.add_argument("--type")
    m.add_argument("--arch")
    m.add_argument("--experts", type=int, default=8)
    m.add_argument("--top-k", type=int)
    m.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    {"run": cmd_run, "bench": cmd_bench, "mkmodel": cmd_mkmodel}[a.cmd](a)


if __name__ == "__main__":
    main()
