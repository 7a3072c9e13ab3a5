"""Constants and small helpers shared by the peer benchmark's modules (and its fake engine)."""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUNNER = HERE / "llama_runner.py"
INSTALLER = HERE / "install_llama.sh"
FAKE_FS = HERE / "fake_flashstream.py"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
DEFAULT_VENV = Path(os.environ.get("FLASHSTREAM_PEER_VENV", Path.home() / ".cache/flashstream/peer-venv"))
MiB = 1 << 20
GiB = 1 << 30

# Our own prose (any text works; it is cut to the requested number of tokens per model).
BASE_PROMPT = (
    "The keeper of the northern lighthouse wrote in her log every evening before the lamp was lit. "
    "She noted the height of the swell, the colour of the sky over the western cliffs, the ships "
    "that passed and the birds that sheltered on the gallery rail. In winter the entries grew "
    "short, because the wind made her hands ache, but she never missed a day. Years later her "
    "grandson found the books in a tin trunk and read them aloud to his own children, who asked "
    "why anyone would write down the weather. He told them that a record kept faithfully is how "
    "you learn what changes slowly, and that the sea had been teaching her patience all along. "
    "Then he carried the trunk to the museum in the harbour town, where the books still sit "
    "behind glass, open at a page from a stormy night in early March."
)


# The llama.cpp settings the benchmark knows.
LLAMA_VARIANTS = {
    "default": "llama_model_default_params(): mmap, weight repacking on (use_extra_bufts=true)",
    "norepack": "mmap, use_extra_bufts=false (no repacking into anonymous memory)",
    "dio": "load_mode=LLAMA_LOAD_MODE_DIRECT_IO (O_DIRECT reads into RAM buffers, no mmap)",
    "nommap": "load_mode=LLAMA_LOAD_MODE_NONE (like --no-mmap)",
}

class HarnessError(Exception):
    """A setup problem the user must fix; printed without a traceback."""


# ---------------------------------------------------------------------------------------
# small helpers

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": MiB, "mib": MiB, "mb": 10**6,
          "g": GiB, "gib": GiB, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}


def parse_size(text):
    """'512MiB', '1.5GiB', '200M', '1048576' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 512MiB, 1.5GiB, 200M or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_size(n):
    """Bytes -> the shortest exact-ish form flashstream's CLI accepts ('448MiB', '1.5GiB')."""
    if n % GiB == 0 or (n >= GiB and (n * 10) % GiB == 0):
        v = n / GiB
        return f"{v:g}GiB"
    if n % MiB == 0:
        return f"{n // MiB}MiB"
    return str(n)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def log(msg):
    print(f"[peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_text(path, default=None):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)

