#!/usr/bin/env python3
"""A stand-in for the `flashstream` binary, for testing the peer harness only.

It accepts the command lines the harness sends (`run`, `bench`, `mkmodel`, `--version`) and
prints JSON of the same shape as the real CLI, with made-up speeds. `run` streams the file
through a buffer no larger than --mem (so it stays under the cgroup cap). `mkmodel dense|moe`
writes a real random-weight Q4_0 GGUF (llama, or qwen3moe with the given experts/top-k) with a
257-token byte-level vocabulary, so that llama.cpp can run it: the whole benchmark can be tried
before flashstream's own CLI exists. Never use its flashstream figures for anything.
"""

import argparse
import json
import os
import random
import struct
import sys
import time

import harness


def parse_size(s):
    """The harness's size parser, exiting with a message on a bad size."""
    try:
        return harness.parse_size(s)
    except argparse.ArgumentTypeError as e:
        sys.exit(f"fake flashstream: {e}")


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


# --- a minimal GGUF v3 writer (random Q4_0 weights) -------------------------------------

F32, Q4_0 = 0, 2


def _s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key, vtype, payload):
    return _s(key) + struct.pack("<I", vtype) + payload


def _u32(key, v):
    return _kv(key, 4, struct.pack("<I", v))


def byte_vocab():
    """GPT-2 byte-to-unicode alphabet: 256 byte tokens, then <|endoftext|> (id 256)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    m = dict(zip(bs, cs))
    return [chr(m[i]) for i in range(256)] + ["<|endoftext|>"]


def tensor_bytes(dims, t):
    n = 1
    for x in dims:
        n *= x
    return n * 4 if t == F32 else n // 32 * 18


def plan(kind, size, experts, top_k):
    """Shapes for a model of about `size` bytes: returns (arch, hparams, tensors)."""
    vocab = 257
    if kind == "dense":
        arch, d, ff, heads, kv_heads = "llama", 2048, 5632, 16, 4
    else:
        arch, d, ff, heads, kv_heads = "qwen3moe", 1024, 512, 16, 4
    hd = d // heads
    fixed = [("token_embd.weight", (d, vocab), Q4_0), ("output_norm.weight", (d,), F32),
             ("output.weight", (d, vocab), Q4_0)]

    def layer(i):
        p = f"blk.{i}."
        t = [(p + "attn_norm.weight", (d,), F32), (p + "attn_q.weight", (d, d), Q4_0),
             (p + "attn_k.weight", (d, kv_heads * hd), Q4_0), (p + "attn_v.weight", (d, kv_heads * hd), Q4_0),
             (p + "attn_output.weight", (d, d), Q4_0), (p + "ffn_norm.weight", (d,), F32)]
        if kind == "dense":
            t += [(p + "ffn_gate.weight", (d, ff), Q4_0), (p + "ffn_up.weight", (d, ff), Q4_0),
                  (p + "ffn_down.weight", (ff, d), Q4_0)]
        else:
            t += [(p + "attn_q_norm.weight", (hd,), F32), (p + "attn_k_norm.weight", (hd,), F32),
                  (p + "ffn_gate_inp.weight", (d, experts), F32),
                  (p + "ffn_gate_exps.weight", (d, ff, experts), Q4_0),
                  (p + "ffn_up_exps.weight", (d, ff, experts), Q4_0),
                  (p + "ffn_down_exps.weight", (ff, d, experts), Q4_0)]
        return t

    per_layer = sum(tensor_bytes(dims, t) for _, dims, t in layer(0))
    base = sum(tensor_bytes(dims, t) for _, dims, t in fixed)
    n_layer = max(1, round((size - base) / per_layer))
    tensors = fixed + [t for i in range(n_layer) for t in layer(i)]
    hp = {"block_count": n_layer, "context_length": 4096, "embedding_length": d, "feed_forward_length": ff,
          "attention.head_count": heads, "attention.head_count_kv": kv_heads}
    if kind == "moe":
        hp.update({"expert_count": experts, "expert_used_count": top_k, "expert_feed_forward_length": ff,
                   "attention.key_length": hd, "attention.value_length": hd})
    return arch, hp, tensors


def write_gguf(out, kind, size, experts, top_k, seed):
    arch, hp, tensors = plan(kind, size, experts, top_k)
    rng = random.Random(seed)
    vocab = byte_vocab()
    kvs = [_kv("general.architecture", 8, _s(arch)), _kv("general.name", 8, _s(f"fake-flashstream random {kind}"))]
    kvs += [_u32(f"{arch}.{k}", v) for k, v in hp.items()]
    kvs += [_kv(f"{arch}.rope.freq_base", 6, struct.pack("<f", 10000.0)),
            _kv(f"{arch}.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-6)),
            _kv("tokenizer.ggml.model", 8, _s("gpt2")), _kv("tokenizer.ggml.pre", 8, _s("default")),
            _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(vocab)) + b"".join(_s(t) for t in vocab)),
            _kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, len(vocab))
                + struct.pack(f"<{len(vocab)}i", *([1] * 256 + [3]))),
            _kv("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, 1) + _s("\u0120 \u0120")),
            _u32("tokenizer.ggml.bos_token_id", 256), _u32("tokenizer.ggml.eos_token_id", 256),
            _kv("tokenizer.ggml.add_bos_token", 7, b"\x00"), _u32("general.file_type", 2),
            _u32("general.quantization_version", 2)]
    infos, off = [], 0
    for name, dims, t in tensors:
        infos.append(_s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<IQ", t, off))
        off += (tensor_bytes(dims, t) + 31) // 32 * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % 32)
    block = bytearray(rng.randbytes(18 * 65536))  # Q4_0 blocks: f16 scale + 16 bytes of nibbles
    for j in range(0, len(block), 18):
        block[j:j + 2] = struct.pack("<e", 0.004)
    with open(out, "wb") as f:
        f.write(head)
        for name, dims, t in tensors:
            nb = tensor_bytes(dims, t)
            if t == F32 and "gate_inp" in name:  # random router, so tokens pick different experts
                f.write(struct.pack(f"<{nb // 4}f", *[rng.gauss(0, 1) for _ in range(nb // 4)]))
            elif t == F32:
                f.write(struct.pack("<f", 1.0 if "norm" in name else 0.01) * (nb // 4))
            else:
                left = nb
                while left:
                    k = min(left, len(block))
                    f.write(block[:k])
                    left -= k
            f.write(b"\0" * (-nb % 32))


def cmd_mkmodel(a):
    if a.kind == "upcycle":
        sys.exit("fake flashstream: mkmodel upcycle is not imitated; use the real flashstream binary")
    if (a.type or "q4_0").lower() != "q4_0":
        sys.exit(f"fake flashstream: only --type q4_0 is imitated, not {a.type}")
    (out,) = a.args
    write_gguf(out, a.kind, parse_size(a.size), a.experts, a.top_k or 2, a.seed)


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
