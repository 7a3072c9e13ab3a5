"""pytest over the ctypes binding: errors, streaming, early stop, set_budget with RSS measured,
chat. Needs FLASHSTREAM_LIB (or the library next to the package / on the system paths) and
FLASHSTREAM_BIN (the flashstream CLI, to make the ~1.3 GB model); the real SmolLM2 model in
models/ (tools/fetch-models.sh) for the chat test."""

import os
import pathlib
import subprocess
import threading

import pytest

import flashstream

ROOT = pathlib.Path(__file__).resolve().parents[3]
SMALL = ROOT / "testdata/models/rand-llama-q8_0.gguf"
SMOL = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
MiB = 1 << 20


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
        # The generation stopped soon after the break (cancelled), not at 64 tokens.
        assert eng.last_generation["stop_reason"] == 4
        assert eng.last_generation["n_generated"] < 64
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
    with flashstream.Engine(SMOL, mem="256MiB", threads=2) as eng:
        text = eng.apply_chat_template([{"role": "user", "content": "Hi"}])
        assert "<|im_start|>user\nHi<|im_end|>" in text
        a = eng.complete("What is the capital of France?", max_tokens=8, chat=True,
                         system="Answer in one word.")
        b = "".join(eng.generate("What is the capital of France?", max_tokens=8, chat=True,
                                 system="Answer in one word."))
        assert a == b and a.strip()
        assert "Paris" in a


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    exe = os.environ.get("FLASHSTREAM_BIN", str(ROOT / "target/release/flashstream"))
    path = tmp_path_factory.mktemp("models") / "dense-1.3g.gguf"
    subprocess.run([exe, "mkmodel", "dense", "--size", "1300MiB", "--layers", "24", str(path)],
                   check=True, stdout=subprocess.DEVNULL)
    yield path
    path.unlink()


# What the process holds beside the engine's budget: the Python interpreter, pytest, the
# library's code, thread stacks and allocator slack.
RSS_ALLOWANCE = 96 * MiB


def test_set_budget_shrinks_rss_and_keeps_the_text(big_model):
    assert big_model.stat().st_size > 1200 * MiB
    with flashstream.Engine(big_model, mem="768MiB", threads=2, ctx=64) as eng:
        before = eng.complete("The capital of France is", max_tokens=3, stop_at_eog=False)
        rss_768 = rss_bytes()
        assert eng.stats()["planned_bytes"] > 600 * MiB
        eng.set_budget("256MiB")
        rss_256 = rss_bytes()
        s = eng.stats()
        assert s["budget_bytes"] == 256 * MiB and s["planned_bytes"] <= 256 * MiB
        print("RSS at 768MiB: %.1f MiB; after set_budget(256MiB): %.1f MiB" %
              (rss_768 / MiB, rss_256 / MiB))
        assert rss_256 < 256 * MiB + RSS_ALLOWANCE, "RSS %.1f MiB" % (rss_256 / MiB)
        assert rss_768 - rss_256 > 400 * MiB
        after = eng.complete("The capital of France is", max_tokens=3, stop_at_eog=False)
        assert after == before
        assert rss_bytes() < 256 * MiB + RSS_ALLOWANCE


def test_set_budget_from_another_thread_while_generating(big_model):
    with flashstream.Engine(big_model, mem="512MiB", threads=2, ctx=64) as eng:
        want = eng.complete("Hello", max_tokens=4, stop_at_eog=False)
        done = threading.Event()
        errors = []

        def flip():
            i = 0
            while not done.is_set():
                try:
                    eng.set_budget("256MiB" if i % 2 == 0 else "512MiB")
                except flashstream.Error as e:
                    errors.append(e)
                i += 1

        t = threading.Thread(target=flip)
        t.start()
        try:
            got = eng.complete("Hello", max_tokens=4, stop_at_eog=False)
        finally:
            done.set()
            t.join()
        assert not errors
        assert got == want
