#!/usr/bin/env python3
"""flashstream against llama.cpp, side by side, under the same memory cap.

Entry point: benches/peer/run.sh (see README.md there). Standard library only; llama.cpp runs
from a private venv (install_llama.sh) through llama_runner.py.

For every model: alternate flashstream and each llama.cpp setting (A B A B ...), at least
three pairs, same threads / prompt / token count, each run in its own memory cgroup with the
same limit (page cache included, swap excluded), the model file dropped from the page cache
before every run. Writes one JSON file with every run and per-pair ratios plus a markdown
table of medians, and prints the table.
"""


import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from harness import (
    DEFAULT_VENV, FAKE_FS, LLAMA_VARIANTS, REPO, GiB, HarnessError, MiB, fmt_size, log, median,
    parse_size,
)
from machine import Cgroups
from install import Install
from models import Models
from report import Report
from runs import Runs


class Bench(Install, Models, Runs, Report):
    """One benchmark run: its options, output folder, cgroups and records."""

    def __init__(self, args):
        self.a = args
        self.out = Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs = []
        self.models = {}
        self.extra = {}
        self.cg = None
        self.install_proc = None
        self.seq = 0


# ---------------------------------------------------------------------------------------
# self-test


def self_test(args):
    """Harness logic end to end with the fake engines, small sizes; asserts what must hold."""
    assert parse_size("512MiB") == 512 * MiB and parse_size("1.5GiB") == 3 * GiB // 2
    assert parse_size("200M") == 200 * MiB and parse_size("4096") == 4096
    assert fmt_size(448 * MiB) == "448MiB" and fmt_size(3 * GiB // 2) == "1.5GiB" and fmt_size(2 * GiB) == "2GiB"
    assert median([3, None, 1, 2]) == 2 and median([None]) is None
    for bad in ("12XB", "", "abc"):
        try:
            parse_size(bad)
        except argparse.ArgumentTypeError:
            continue
        raise AssertionError(f"parse_size accepted {bad!r}")
    cg = Cgroups()
    b = Bench(args)
    b.cg = cg
    b.run()
    doc = json.loads((b.out / "results.json").read_text())
    runs = doc["runs"]
    n_models, n_order = len(args.models), len(b.order())
    assert len(runs) == n_models * args.pairs * n_order, f"{len(runs)} runs recorded"
    problems = []
    for r in runs:
        capped = r["cap_bytes"] is not None
        if r["engine"] == "llama" and r["variant"] in ("default", "dio", "nommap") and capped:
            # the fake copies the whole file into anonymous memory (repacking / RAM buffers): an OOM kill
            if r["result"] == "skipped" and r["pair"] > 0:
                continue
            if not (r["killed"] and r["kill_reason"] == "oom"):
                problems.append(f"expected an OOM kill: {r['model']} {r['variant']} p{r['pair']}: {r['result']}")
        elif r["result"] != "ok":
            problems.append(f"{r['model']} {r['engine']} {r['variant']} p{r['pair']}: {r['result']} "
                            f"{r.get('kill_reason') or r.get('error')}")
        if r["result"] == "skipped":
            continue
        if capped and r["peak_memory_bytes"] and r["peak_memory_bytes"] > r["cap_bytes"]:
            problems.append(f"peak over the cap: {r}")
        if r["peak_memory_bytes"] is None:
            problems.append(f"no peak memory recorded: {r['model']} {r['engine']} {r['variant']}")
        if r["cached_fraction_before"] not in (None, 0.0) and r["cached_fraction_before"] > 0.01:
            problems.append(f"page cache not dropped ({r['cached_fraction_before']:.2f}) before {r['stdout_log']}")
    if not any(x["decode_ratio"] for x in doc["pair_ratios"]):
        problems.append("no pair ratio computed")
    if not (b.out / "results.md").read_text().count("| flashstream |") == n_models:
        problems.append("markdown table lacks flashstream rows")
    if problems:
        print("SELF-TEST FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"self-test: {len(runs)} runs, OOM kill / peak / page-cache / ratio / table logic OK "
          f"({b.out}); 1 passed, 0 failed")
    return 0


# ---------------------------------------------------------------------------------------
# command line


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="benches/peer/run.sh",
        description="flashstream vs llama.cpp under the same memory cgroup cap (needs root).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--cap", type=parse_size, default=512 * MiB, help="memory cap of the capped runs (dense, moe)")
    ap.add_argument("--dense-size", type=parse_size, default=None, help="dense model size (default 3x --cap)")
    ap.add_argument("--moe-size", type=parse_size, default=None, help="MoE model size (default 4x --cap)")
    ap.add_argument("--dense-model", default=None, help="use this GGUF as the dense model instead of mkmodel")
    ap.add_argument("--moe-model", default=None, help="use this GGUF as the MoE model instead of mkmodel")
    ap.add_argument("--dense-type", default="q4_0")
    ap.add_argument("--moe-type", default="q4_0")
    ap.add_argument("--moe-arch", default="qwen3moe")
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1, help="seed for mkmodel dense/upcycle")
    ap.add_argument("--upcycle-cap", type=parse_size, default=224 * MiB, help="cap for the 'upcycle' model")
    ap.add_argument("--up-experts", type=int, default=16)
    ap.add_argument("--up-top-k", type=int, default=4)
    ap.add_argument("--real-cap", type=parse_size, default=None,
                    help="cap for SmolLM2/Gemma (default: none, the fits-in-memory comparison)")
    ap.add_argument("--models", default="dense,moe,smollm,gemma",
                    help="comma list of dense, moe, upcycle, smollm, gemma")
    ap.add_argument("--engines", default="flashstream,llama", help="comma list of flashstream, llama")
    ap.add_argument("--variants", default="default,norepack,dio",
                    help="llama.cpp settings: " + ", ".join(f"{k} ({v})" for k, v in LLAMA_VARIANTS.items()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in llama.cpp tokens (at least)")
    ap.add_argument("-n", "--gen", type=int, default=16, help="tokens generated per run, uncapped models")
    ap.add_argument("--gen-capped", type=int, default=8,
                    help="tokens generated per run under a cap (llama.cpp decodes at ~0.2 tok/s there)")
    ap.add_argument("--rerun-killed", action="store_true",
                    help="rerun a setting in every pair even after the cap killed it (default: pair 0 only)")
    ap.add_argument("--pairs", type=int, default=3, help="A B rounds per model (>= 3 for a result)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds before a run is killed (recorded)")
    ap.add_argument("--fs-allowance", type=parse_size, default=64 * MiB,
                    help="flashstream gets --mem = cap - this (code, allocator, KV cache)")
    ap.add_argument("--no-fs-bench", action="store_true", help="skip `flashstream bench` on the capped models")
    ap.add_argument("--flashstream", default=str(REPO / "target/release/flashstream"),
                    help="flashstream binary (the default is built with cargo if missing)")
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help="private venv for llama-cpp-python")
    ap.add_argument("--model-dir", default=str(REPO / "target/peer/models"), help="where generated models go")
    ap.add_argument("--smollm", default=str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--gemma", default=str(REPO / "models/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--out", default=None, help="results directory (default target/peer/<timestamp>)")
    ap.add_argument("--fake-llama", action="store_true", help="imitate llama.cpp's memory behaviour (tests only)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke-test sizes: cap 128MiB, 1 pair, 16-token prompt, 4 tokens (not a result)")
    ap.add_argument("--self-test", action="store_true",
                    help="harness logic with fake engines and tiny models (needs root, ~1 min)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit (no root needed)")
    a = ap.parse_args(argv)
    if a.self_test:
        a.quick = True
        a.fake_llama = True
        a.flashstream = str(FAKE_FS)
        a.model_dir = str(REPO / "target/peer/self-test/models")
        a.models = "dense,moe"
        a.real_cap = None
        a.cap = 64 * MiB
        a.pairs = 2
        a.variants = "default,norepack,dio"
        a.out = a.out or str(REPO / "target/peer/self-test/run")
    if a.quick:
        if a.cap == 512 * MiB:
            a.cap = 128 * MiB
        a.pairs = 1 if not a.self_test else a.pairs
        a.prompt_tokens, a.gen, a.gen_capped = 16, 4, 4
    a.models = [m for m in a.models.split(",") if m]
    a.engines = [e for e in a.engines.split(",") if e]
    a.variants = [v for v in a.variants.split(",") if v]
    for e in a.engines:
        if e not in ("flashstream", "llama"):
            ap.error(f"unknown engine {e!r}")
    for v in a.variants:
        if v not in LLAMA_VARIANTS:
            ap.error(f"unknown llama.cpp variant {v!r} (known: {', '.join(LLAMA_VARIANTS)})")
    if a.gen < 2 or a.gen_capped < 2:
        ap.error("-n/--gen-capped must be at least 2 (one token from the prompt, then decode steps)")
    if a.pairs < 3 and not a.quick:
        log(f"note: {a.pairs} pairs; the benchmark's result needs at least 3")
    a.out = a.out or str(REPO / "target/peer" / time.strftime("%Y%m%d-%H%M%S"))
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if a.dry_run:
            b = Bench.__new__(Bench)
            b.a = a
            print("\n".join(b.plan()))
            print(f"results -> {a.out}; llama.cpp venv {a.venv}")
            return 0
        if a.self_test:
            shutil.rmtree(a.out, ignore_errors=True)
            return self_test(a)
        cg = Cgroups()  # refuses without root before anything is built or written
        b = Bench(a)
        b.cg = cg
        b.run()
        return 0
    except HarnessError as e:
        print(f"peer: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `run.sh --dry-run | head`
        return 0
    except KeyboardInterrupt:
        print("peer: interrupted; partial results are in results.json", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

