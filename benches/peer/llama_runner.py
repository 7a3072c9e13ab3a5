#!/usr/bin/env python3
"""llama.cpp side of the peer benchmark: one model, one setting, one greedy run.

Runs inside the benchmark's memory cgroup with the private venv's Python, and talks to
libllama through the low-level ctypes API of `llama_cpp` (llama-cpp-python), so that the
model parameters the benchmark varies are set exactly and nothing else runs in between.

    llama_runner.py info
    llama_runner.py tokenize --model M            (stdin: JSON list of texts; stdout: counts)
    llama_runner.py run --model M --variant V --threads T --prompt-file F -n N

`run` prints one JSON object on stdout. Exit status 3 means "this llama.cpp cannot do that
variant" (the JSON says why); any other failure is a non-zero exit with a message on stderr.

`--fake` (or FLASHSTREAM_PEER_FAKE_LLAMA=1) does not import llama_cpp: it imitates the memory
behaviour of each variant on the raw file (mmap reads, an anonymous copy for repacking, a
full read for direct I/O) so the harness's cgroup, kill and peak logic can be tested quickly.
"""

import argparse
import ctypes
import json
import mmap
import os
import sys
import time

# The settings compared. Each maps to llama_model_params fields (see `model_params`).
VARIANTS = {
    "default": "llama_model_default_params(): load_mode AUTO (mmap), use_extra_bufts=true (repacking)",
    "norepack": "defaults with use_extra_bufts=false (no weight repacking into anonymous memory)",
    "dio": "load_mode=LLAMA_LOAD_MODE_DIRECT_IO (weights read with O_DIRECT into RAM buffers)",
    "nommap": "load_mode=LLAMA_LOAD_MODE_NONE (like --no-mmap: weights read into RAM buffers)",
}

EXIT_UNSUPPORTED = 3


def fail(msg, code=1):
    print(f"llama_runner: error: {msg}", file=sys.stderr)
    sys.exit(code)


def unsupported(msg):
    print(json.dumps({"unsupported": msg}))
    print(f"llama_runner: unsupported: {msg}", file=sys.stderr)
    sys.exit(EXIT_UNSUPPORTED)


# ---------------------------------------------------------------------------------------
# real llama.cpp


def load_llama():
    try:
        import llama_cpp  # noqa: PLC0415 (only inside the venv)
    except ImportError as e:
        fail(f"cannot import llama_cpp ({e}); run benches/peer/install_llama.sh first")
    return llama_cpp


def param_fields(struct):
    return [f[0] for f in struct._fields_]


def capabilities(L):
    fields = param_fields(L.llama_model_params)
    return {
        "use_extra_bufts": "use_extra_bufts" in fields,
        "load_mode": "load_mode" in fields,
        "use_mmap_field": "use_mmap" in fields,
        "use_direct_io_field": "use_direct_io" in fields,
        "direct_io_load_mode": hasattr(L, "LLAMA_LOAD_MODE_DIRECT_IO"),
        "lazy_mode": "lazy_mode" in fields,
        "model_params_fields": fields,
    }


def model_params(L, variant):
    """llama_model_params for a variant, or exit EXIT_UNSUPPORTED naming what is missing."""
    caps = capabilities(L)
    p = L.llama_model_default_params()
    if variant == "default":
        pass
    elif variant == "norepack":
        if not caps["use_extra_bufts"]:
            unsupported("llama_model_params has no use_extra_bufts field in this version")
        p.use_extra_bufts = False
    elif variant == "dio":
        if caps["load_mode"] and caps["direct_io_load_mode"]:
            p.load_mode = L.LLAMA_LOAD_MODE_DIRECT_IO
        elif caps["use_direct_io_field"]:
            p.use_direct_io = True
        else:
            unsupported("this llama.cpp offers no direct I/O load mode (no LLAMA_LOAD_MODE_DIRECT_IO, no use_direct_io)")
    elif variant == "nommap":
        if caps["load_mode"]:
            p.load_mode = L.LLAMA_LOAD_MODE_NONE
        elif caps["use_mmap_field"]:
            p.use_mmap = False
        else:
            unsupported("cannot turn mmap off in this version")
    else:
        fail(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})", 2)
    return p


def describe_params(p):
    out = {}
    for name in ("load_mode", "lazy_mode", "use_extra_bufts", "use_mmap", "use_direct_io", "no_host"):
        if name in param_fields(type(p)):
            v = getattr(p, name)
            out[name] = bool(v) if isinstance(v, bool) else int(v)
    return out


def tokenize(L, vocab, text):
    data = text.encode("utf-8")
    cap = len(data) + 16
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), buf, cap, True, True)
    if n < 0:  # buffer too small: -n is the size needed
        cap = -n
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, data, len(data), buf, cap, True, True)
    if n < 0:
        fail(f"llama_tokenize failed ({n})")
    return [buf[i] for i in range(n)]


def piece(L, vocab, tok):
    buf = ctypes.create_string_buffer(256)
    n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, False)
    return buf.raw[: max(n, 0)]


def load_model(L, path, params):
    L.llama_backend_init()
    model = L.llama_model_load_from_file(path.encode(), params)
    if not model:
        fail(f"llama_model_load_from_file failed for {path} (see the llama.cpp log above)")
    return model


def cmd_info(_args):
    L = load_llama()
    from importlib.metadata import version

    caps = capabilities(L)
    sysinfo = L.llama_print_system_info()
    print(
        json.dumps(
            {
                "llama_cpp_python": version("llama_cpp_python"),
                "system_info": sysinfo.decode(errors="replace").strip() if sysinfo else None,
                "capabilities": caps,
                "variants": VARIANTS,
                "default_params": describe_params(L.llama_model_default_params()),
            }
        )
    )


def cmd_tokenize(args):
    texts = json.load(sys.stdin)
    if args.fake:
        counts = [len(t.encode("utf-8")) for t in texts]
    else:
        L = load_llama()
        p = L.llama_model_default_params()
        p.vocab_only = True
        model = load_model(L, args.model, p)
        vocab = L.llama_model_get_vocab(model)
        counts = [len(tokenize(L, vocab, t)) for t in texts]
        L.llama_model_free(model)
    print(json.dumps(counts))


def cmd_run(args):
    with open(args.prompt_file, encoding="utf-8") as f:
        text = f.read()
    if args.n < 1:
        fail("-n must be at least 1", 2)
    if args.fake:
        return fake_run(args, text)
    L = load_llama()
    params = model_params(L, args.variant)

    t_load0 = time.perf_counter()
    model = load_model(L, args.model, params)
    vocab = L.llama_model_get_vocab(model)
    prompt = tokenize(L, vocab, text)
    if not prompt:
        fail("the prompt tokenized to nothing")

    cp = L.llama_context_default_params()
    n_ctx = len(prompt) + args.n + 16
    cp.n_ctx = n_ctx
    cp.n_batch = max(len(prompt), 32)
    cp.n_ubatch = max(len(prompt), 32)
    cp.n_threads = args.threads
    cp.n_threads_batch = args.threads
    cp.no_perf = False
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        fail("llama_init_from_model failed (see the llama.cpp log above)")
    smpl = L.llama_sampler_init_greedy()
    t_load1 = time.perf_counter()

    # Prompt evaluation in one batch, then the first greedy token: time to first token.
    arr = (L.llama_token * len(prompt))(*prompt)
    t0 = time.perf_counter()
    if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(prompt))) != 0:
        fail("llama_decode failed on the prompt")
    tok = L.llama_sampler_sample(smpl, ctx, -1)
    t1 = time.perf_counter()
    tokens = [tok]
    one = (L.llama_token * 1)()
    # N-1 single-token decode steps give the remaining N-1 tokens; EOS is ignored.
    for _ in range(args.n - 1):
        one[0] = tok
        if L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) != 0:
            fail(f"llama_decode failed at generated token {len(tokens)}")
        tok = L.llama_sampler_sample(smpl, ctx, -1)
        tokens.append(tok)
    t2 = time.perf_counter()

    perf = L.llama_perf_context(ctx)
    text_out = b"".join(piece(L, vocab, t) for t in tokens).decode("utf-8", errors="replace")
    decode_steps = args.n - 1
    out = {
        "engine": "llama.cpp",
        "variant": args.variant,
        "params": describe_params(params),
        "threads": args.threads,
        "n_ctx": n_ctx,
        "prompt_tokens": prompt,
        "tokens": tokens,
        "text": text_out,
        "stats": {
            "prompt_tokens": len(prompt),
            "generated_tokens": len(tokens),
            "load_s": t_load1 - t_load0,
            "time_to_first_token_s": t1 - t0,
            "prompt_tokens_per_s": len(prompt) / (t1 - t0),
            "decode_steps": decode_steps,
            "decode_s": t2 - t1,
            "decode_tokens_per_s": decode_steps / (t2 - t1) if decode_steps else None,
            "perf": {
                "t_p_eval_ms": perf.t_p_eval_ms,
                "n_p_eval": perf.n_p_eval,
                "t_eval_ms": perf.t_eval_ms,
                "n_eval": perf.n_eval,
            },
        },
    }
    L.llama_sampler_free(smpl)
    L.llama_free(ctx)
    L.llama_model_free(model)
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------
# fake llama.cpp (harness self-test only)


def fake_run(args, text):
    """Imitate each variant's memory use on the raw file; no inference."""
    prompt = list(text.encode("utf-8"))
    size = os.path.getsize(args.model)
    page = mmap.PAGESIZE
    hold = []
    t_load0 = time.perf_counter()
    fd = os.open(args.model, os.O_RDONLY)
    try:
        if args.variant in ("dio", "nommap", "default"):
            # dio/nommap: all weights in RAM buffers; default: repacking copies them to anonymous memory
            buf = bytearray(size)
            view = memoryview(buf)
            off = 0
            while off < size:
                n = os.readv(fd, [view[off : off + (8 << 20)]])
                if n <= 0:
                    break
                off += n
            hold.append(buf)
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ) if args.variant in ("default", "norepack") else None
    finally:
        os.close(fd)
    t_load1 = time.perf_counter()

    def one_pass():
        if mm is not None:
            s = 0
            for off in range(0, size, page):
                s += mm[off]
            return s
        return 0

    t0 = time.perf_counter()
    one_pass()
    t1 = time.perf_counter()
    for _ in range(args.n - 1):
        one_pass()
    t2 = time.perf_counter()
    tokens = [(i * 7 + 3) % 256 for i in range(args.n)]
    steps = args.n - 1
    print(
        json.dumps(
            {
                "engine": "llama.cpp (fake)",
                "variant": args.variant,
                "params": {"fake": True},
                "threads": args.threads,
                "prompt_tokens": prompt,
                "tokens": tokens,
                "text": bytes(tokens).decode("latin-1"),
                "stats": {
                    "prompt_tokens": len(prompt),
                    "generated_tokens": len(tokens),
                    "load_s": t_load1 - t_load0,
                    "time_to_first_token_s": t1 - t0,
                    "prompt_tokens_per_s": len(prompt) / max(t1 - t0, 1e-9),
                    "decode_steps": steps,
                    "decode_s": t2 - t1,
                    "decode_tokens_per_s": steps / max(t2 - t1, 1e-9) if steps else None,
                },
            }
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fake", action="store_true", default=os.environ.get("FLASHSTREAM_PEER_FAKE_LLAMA") == "1")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    t = sub.add_parser("tokenize")
    t.add_argument("--model", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    r.add_argument("--threads", type=int, required=True)
    r.add_argument("--prompt-file", required=True)
    r.add_argument("-n", type=int, required=True)
    args = ap.parse_args()
    {"info": cmd_info, "tokenize": cmd_tokenize, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
