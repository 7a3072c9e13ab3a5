"""pytest over the ctypes binding: errors, streaming, early stop, set_budget with RSS measured,
chat. Needs FLASHSTREAM_LIB (or the library next to the package / on the system paths) and
FLASHSTREAM_BIN (the flashstream CLI, to make the ~1.3 GB model); the real SmolLM2 model in
models/ (tools/fetch-models.sh) for the chat test."""

import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest

import flashstream

ROOT = pathlib.Path(__file__).resolve().parents[3]
SMALL = ROOT / "testdata/models/rand-llama-q8_0.gguf"
SMOL = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
MiB = 1 << 20


def rss_bytes():
    """The process's resident memory now (VmRSS of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_bad_path_raises_with_a_message():
    with pytest.raises(flashstream.Error, match="nonexistent"):
        flashstream.Engine("/nonexistent/model.gguf", mem="512MiB")


def test_too_small_budget_raises_stating_the_minimum():
    with pytest.raises(flashstream.Error, match="minimum"):
        flashstream.Engine(SMALL, mem="64KiB", threads=2)


def test_bad_sizes_and_arguments():
    for bad in ["lots", "0", "-1G", 0, 1.5, None]:
        with pytest.raises(flashstream.Error):
            flashstream.parse_size(bad)
    assert flashstream.parse_size("512MiB") == 512 * MiB
    assert flashstream.parse_size("1.5g") == 3 << 29
    assert flashstream.parse_size(4096) == 4096
    with flashstream.Engine(SMALL, mem=64 * MiB, threads=2) as eng:
        with pytest.raises(flashstream.Error, match="minimum"):
            eng.set_budget(4096)
        assert eng.stats()["budget_bytes"] == 64 * MiB  # nothing changed
        with pytest.raises(flashstream.Error, match="fraction"):
            eng.set_budget_auto(1.5)
        assert eng.stats()["budget_bytes"] == 64 * MiB
        with pytest.raises(flashstream.Error):
            eng.complete("", max_tokens=4)
        with pytest.raises(flashstream.Error, match="temperature"):
            eng.complete("hi", temperature=-1.0)
    with pytest.raises(flashstream.Error, match="closed"):
        eng.stats()


def test_streaming_equals_complete_and_breaking_out_stops():
    with flashstream.Engine(SMALL, mem="64MiB", threads=2) as eng:
        pieces = list(eng.generate("Once upon a time", max_tokens=12, stop_at_eog=False))
        assert len(pieces) >= 2
        whole = eng.complete("Once upon a time", max_tokens=12, stop_at_eog=False)
        assert "".join(pieces) == whole
        assert eng.last_generation["n_generated"] == 12
        got = []
        for piece in eng.generate("Once upon a time", max_tokens=64, stop_at_eog=False):
            got.append(piece)
            if len(got) == 3:
                break
        assert len(got) == 3
        # Lockstep: the break stopped the generation at the next token (cancelled).
        assert eng.last_generation["stop_reason"] == 4
        assert eng.last_generation["n_generated"] <= 4
        s = eng.stats()
        for k in ["bytes_read", "peak_memory_bytes", "budget_bytes"]:
            assert k in s
        assert s["decode_tokens_per_s"] > 0


def test_tokenize_roundtrip_and_plan():
    with flashstream.Engine(SMALL, mem="64MiB", threads=2) as eng:
        ids = eng.tokenize("hello world", add_special=False)
        assert eng.detokenize(ids) == "hello world"
        assert "budget" in eng.plan()


@pytest.mark.skipif(not SMOL.exists() and os.environ.get("CI") != "true", reason="models/ not fetched")
def test_chat_uses_the_template():
    """chat=True equals `flashstream run --chat --temp 0` (the same template and BOS handling)."""
    exe = os.environ.get("FLASHSTREAM_BIN", str(ROOT / "target/release/flashstream"))
    cli = subprocess.run([exe, "run", str(SMOL), "-p", "What is the capital of France?", "--chat",
                          "--system", "Answer in one word.", "-n", "8", "--temp", "0",
                          "--mem", "256MiB"], check=True, capture_output=True, text=True).stdout
    with flashstream.Engine(SMOL, mem="256MiB", threads=2) as eng:
        text = eng.apply_chat_template([{"role": "user", "content": "Hi"}])
        assert "<|im_start|>user\nHi<|im_end|>" in text
        a = eng.complete("What is the capital of France?", max_tokens=8, chat=True,
                         system="Answer in one word.")
        b = "".join(eng.generate("What is the capital of France?", max_tokens=8, chat=True,
                                 system="Answer in one word."))
        assert a == b and a.strip()
        assert cli.rstrip("\n") == a.rstrip("\n")  # the CLI ends chat replies with a newline
        assert "Paris" in a


@pytest.fixture(scope="module")
def big_model():
    """A random dense llama of ~1.3 GB (q4_0), made once under target/ffi-ci/ and reused."""
    path = ROOT / "target/ffi-ci/dense-1.3g-q4_0.gguf"
    if not path.exists():
        exe = os.environ.get("FLASHSTREAM_BIN", str(ROOT / "target/release/flashstream"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        subprocess.run([exe, "mkmodel", "dense", str(tmp), "--size", "1.3GiB", "--type", "q4_0"],
                       check=True, stdout=subprocess.DEVNULL)
        tmp.rename(path)
    return path


# The RSS bound after set_budget(256MiB) is 256 MiB + the process's baseline (measured before
# the engine opens: the interpreter and libflashstream's code) + this slack for what the budget
# does not count (allocator slack and fragmentation, thread stacks).
SLACK = 32 * MiB
PROMPT = "The capital of France is"


def measure_set_budget(model):
    """In a fresh interpreter (so earlier tests' heap does not blur the figures): the RSS before
    the engine, at 768MiB after generating, after set_budget(256MiB), after generating under
    it, and the greedy texts."""
    flashstream.version()  # the library's code is loaded before the baseline
    r = {"baseline": rss_bytes()}
    with flashstream.Engine(model, mem="768MiB", threads=2, ctx=64) as eng:
        r["text_768"] = eng.complete(PROMPT, max_tokens=3, stop_at_eog=False)
        r["planned_768"] = eng.stats()["planned_bytes"]
        r["rss_768"] = rss_bytes()
        eng.set_budget("256MiB")
        r["rss_256"] = rss_bytes()
        s = eng.stats()
        r["budget_256"], r["planned_256"] = s["budget_bytes"], s["planned_bytes"]
        r["text_256"] = eng.complete(PROMPT, max_tokens=3, stop_at_eog=False)
        r["rss_256_after_generating"] = rss_bytes()
        eng.set_budget(768 * MiB)  # growing back pins again
        r["budget_back"] = eng.stats()["budget_bytes"]
        r["text_back"] = eng.complete(PROMPT, max_tokens=3, stop_at_eog=False)
    return r


def test_set_budget_shrinks_rss_and_keeps_the_text(big_model):
    assert big_model.stat().st_size > 1200 * MiB
    out = subprocess.run([sys.executable, __file__, "measure-set-budget", str(big_model)],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    bound = 256 * MiB + r["baseline"] + SLACK
    print("\nRSS: baseline (interpreter, library) %.1f MiB; at 768MiB %.1f MiB; after "
          "set_budget(256MiB) %.1f MiB, after generating under it %.1f MiB (bound %.1f MiB)" %
          (r["baseline"] / MiB, r["rss_768"] / MiB, r["rss_256"] / MiB,
           r["rss_256_after_generating"] / MiB, bound / MiB))
    assert r["planned_768"] > 600 * MiB
    assert r["budget_256"] == 256 * MiB and r["planned_256"] <= 256 * MiB
    assert r["rss_768"] - r["rss_256"] > 300 * MiB
    assert r["rss_256"] < bound
    assert r["rss_256_after_generating"] < bound
    assert r["budget_back"] == 768 * MiB
    assert r["text_768"] == r["text_256"] == r["text_back"]


@pytest.mark.skipif(not SMOL.exists() and os.environ.get("CI") != "true", reason="models/ not fetched")
def test_set_budget_from_another_thread_while_generating():
    """Budget changes from another thread land between tokens; the greedy text is the same."""
    with flashstream.Engine(SMOL, mem="160MiB", threads=2, ctx=64) as eng:
        low = eng.stats()["min_budget_bytes"]
        assert low < 160 * MiB
        want = eng.complete(PROMPT, max_tokens=16, stop_at_eog=False)
        done = threading.Event()
        flips = []
        errors = []

        def flip():
            while True:
                try:
                    eng.set_budget(low if len(flips) % 2 == 0 else 160 * MiB)
                    flips.append(eng.stats()["budget_bytes"])
                except flashstream.Error as e:
                    errors.append(e)
                    return
                if done.wait(0.01):
                    return

        t = threading.Thread(target=flip)
        got = []
        try:
            for piece in eng.generate(PROMPT, max_tokens=16, stop_at_eog=False):
                if not got:
                    t.start()  # the generation is under way: budget changes land between tokens
                got.append(piece)
        finally:
            done.set()
            if t.ident is not None:
                t.join()
        assert not errors
        assert flips, "no budget change happened while generating"
        assert "".join(got) == want


if __name__ == "__main__" and sys.argv[1:2] == ["measure-set-budget"]:
    print(json.dumps(measure_set_budget(sys.argv[2])))


def test_auto_budget_follows_available_memory_and_keeps_the_text():
    """Auto mode on Linux reads the cgroup / MemAvailable; the budget lands within [min, max]
    and the greedy text is the one of a fixed budget. A fixed set_budget turns it off."""
    with flashstream.Engine(SMALL, mem=64 * MiB, threads=2) as eng:
        fixed = eng.complete("The capital of France is", max_tokens=8)
        eng.set_budget_auto(0.5, min=48 * MiB, max=200 * MiB)
        b = eng.stats()["budget_bytes"]
        assert 48 * MiB <= b <= 200 * MiB, b
        assert eng.complete("The capital of France is", max_tokens=8) == fixed
        eng.set_budget("96MiB")
        assert eng.stats()["budget_bytes"] == 96 * MiB
        eng.set_budget_auto(None)  # off again: nothing changes
        assert eng.stats()["budget_bytes"] == 96 * MiB
