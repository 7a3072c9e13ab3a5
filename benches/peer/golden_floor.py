#!/usr/bin/env python3
"""How far llama.cpp itself, built on this machine, is from the golden references.

The goldens in testdata/golden were made by llama.cpp (llama-cpp-python 0.3.36) on some other
machine. Its x86 kernels depend on the CPU it is built for (AVX2, AVX-512, VNNI, repacked
layouts), so the same llama.cpp version built here gives different logits. This script measures
that difference with the goldens' own measure (every reference top-10 logit within
`0.5 + 0.02*|logit|` for real models; the figure is the worst error as a multiple of that
tolerance), for:

  llama-batch   llama.cpp here, all tokens in one batch (as `flashstream logits` evaluates)
  llama-seq     llama.cpp here, prompt in one batch then one token at a time (as the goldens
                were generated)
  llama-single  llama.cpp here, every token evaluated alone (no batched kernels at all)
  flashstream   `flashstream logits` (if --flashstream is given): llama numerics, every batch
                rounding as single tokens do
  flashstream-fast  `flashstream logits --numerics fast`: the default of run/bench/serve, all
                tokens in one batch

and prints one line per case and engine. It also compares flashstream with llama.cpp-here.

With `--kv-type q8_0|q4_0` the KV cache is of that type on both sides and the references are
`generate-kv-<type>.<model>.jsonl`.

With `--write-single DIR`, it also writes `DIR/single.<model>.jsonl`: the golden cases with each
step's top-10 replaced by llama-single's (teacher-forced on the golden tokens), the references
that `runtime/tests/forward_golden.rs` holds flashstream's x86 build to exactly.

Usage (from the repository root, with the peer venv of install_llama.sh):
  ~/.cache/flashstream/peer-venv/bin/python benches/peer/golden_floor.py \
      --flashstream target/release/flashstream models/SmolLM2-135M-Instruct.Q4_1.gguf \
      models/gemma-3-270m-q4_k_m.gguf
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "..", "testdata", "golden")


def tol(logit):
    return 0.5 + 0.02 * abs(logit)


def worst_vs_golden(case, tops):
    """Worst error over the steps (multiples of the tolerance) and top-1 agreement."""
    p = len(case["prompt_tokens"])
    worst, agree = 0.0, 0
    for j, step in enumerate(case["steps"]):
        mine = dict(tops[p - 1 + j])
        for tid, ref in step["top"]:
            if tid in mine:
                worst = max(worst, abs(mine[tid] - ref) / tol(ref))
            else:
                worst = max(worst, float("inf"))
        agree += max(mine, key=mine.get) == step["top"][0][0]
    return worst, agree, len(case["steps"])


def worst_between(a, b):
    """Worst error of b against a's top-10 at every position (a as the reference)."""
    worst = 0.0
    for pa, pb in zip(a, b):
        db = dict(pb)
        for tid, ref in sorted(pa, key=lambda x: -x[1])[:10]:
            if tid in db:
                worst = max(worst, abs(db[tid] - ref) / tol(ref))
    return worst


def llama_tops(llm, np, toks, n_prompt, mode, k=40):
    llm.reset()
    if mode == "batch":
        llm.eval(toks)
    elif mode == "single":
        for t in toks:
            llm.eval([t])
    else:
        llm.eval(toks[:n_prompt])
        for t in toks[n_prompt:]:
            llm.eval([t])
    scores = np.array(llm.scores[: len(toks)])
    return [[(int(i), float(s[i])) for i in np.argsort(-s)[:k]] for s in scores]


def flashstream_tops(binary, model, toks, kv_type, numerics="llama", k=40):
    out = subprocess.run(
        [binary, "logits", model, "--tokens", ",".join(map(str, toks)), "--top", str(k), "--json",
         "--numerics", numerics]
        + (["--kv-type", kv_type] if kv_type else []),
        capture_output=True, text=True, check=True,
    ).stdout
    return [[(int(i), float(v)) for i, v in p["top"]] for p in json.loads(out)["positions"]]


def single_case(case, tops, n_prompt):
    """The golden `case` with each step's top-10 taken from `tops` (llama-single's)."""
    out = dict(case)
    out["reference"] = ("llama.cpp (llama-cpp-python 0.3.36) built on x86 with AVX2, every token "
                        "evaluated alone, flash attention on (benches/peer/golden_floor.py)")
    out["steps"] = [
        dict(step, top=[[tid, v] for tid, v in sorted(tops[n_prompt - 1 + j], key=lambda x: -x[1])[:10]])
        for j, step in enumerate(case["steps"])
    ]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="GGUF files that have generate.<name>.jsonl goldens")
    ap.add_argument("--flashstream", help="flashstream binary to compare as well")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-single", metavar="DIR",
                    help="write llama-single's references as DIR/single.<model>.jsonl")
    ap.add_argument("--kv-type", choices=["q8_0", "q4_0"],
                    help="quantized KV cache on both sides, against generate-kv-<type> references")
    a = ap.parse_args()
    try:
        import numpy as np
        from llama_cpp import Llama
    except ImportError as e:
        sys.exit(f"golden_floor: needs llama-cpp-python and numpy (the peer venv): {e}")
    for model in a.models:
        name = os.path.basename(model)[: -len(".gguf")]
        prefix = f"generate-kv-{a.kv_type}" if a.kv_type else "generate"
        path = os.path.join(GOLDEN, f"{prefix}.{name}.jsonl")
        if not os.path.exists(path):
            sys.exit(f"golden_floor: no golden {path} for {model}")
        cases = [json.loads(line) for line in open(path, encoding="utf-8")]
        # Flash attention on, as the goldens' generator resolves its `auto` setting on a CPU
        # (llama-cpp-python's own default is off, a different summation order). ggml type ids:
        # q4_0 = 2, q8_0 = 8.
        kv = {"flash_attn": True}
        if a.kv_type:
            kv["type_k"] = kv["type_v"] = {"q8_0": 8, "q4_0": 2}[a.kv_type]
        single = []
        llm = Llama(model_path=model, n_ctx=1024, n_threads=a.threads, logits_all=True,
                    verbose=False, n_batch=512, **kv)
        for case in cases:
            toks = case["prompt_tokens"] + [s["token"] for s in case["steps"][:-1]]
            n_p = len(case["prompt_tokens"])
            runs = {m: llama_tops(llm, np, toks, n_p, m) for m in ("batch", "seq", "single")}
            if a.flashstream:
                runs["flashstream"] = flashstream_tops(a.flashstream, model, toks, a.kv_type)
                runs["flashstream-fast"] = flashstream_tops(a.flashstream, model, toks,
                                                            a.kv_type, "fast")
            label = repr(case["prompt"][:24])
            for engine, tops in runs.items():
                w, agree, n = worst_vs_golden(case, tops)
                print(f"{name} {label} {engine if engine.startswith('flashstream') else 'llama-' + engine}: "
                      f"worst {w:.2f}x tolerance vs golden, top-1 {agree}/{n}")
            print(f"{name} {label} llama-batch vs llama-seq here: worst "
                  f"{worst_between(runs['batch'], runs['seq']):.2f}x")
            if a.flashstream:
                for other in ("batch", "single"):
                    print(f"{name} {label} flashstream vs llama-{other} here: worst "
                          f"{worst_between(runs[other], runs['flashstream']):.2e}x")
            if a.write_single:
                single.append(single_case(case, runs["single"], n_p))
        if a.write_single:
            tag = f"single-kv-{a.kv_type}" if a.kv_type else "single"
            out = os.path.join(a.write_single, f"{tag}.{name}.jsonl")
            with open(out, "w", encoding="utf-8") as f:
                for c in single:
                    f.write(json.dumps(c, ensure_ascii=False) + "\n")
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
