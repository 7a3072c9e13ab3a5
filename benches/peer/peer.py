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
import ctypes
import datetime
import json
import mmap
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
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


# ---------------------------------------------------------------------------------------
# machine description


def describe_disk(path):
    st = os.stat(path)
    maj, mnr = os.major(st.st_dev), os.minor(st.st_dev)
    sysdev = Path(f"/sys/dev/block/{maj}:{mnr}")
    out = {"dev": f"{maj}:{mnr}"}
    if not sysdev.exists():
        out["note"] = "no block device behind this file system (overlay, tmpfs or network?)"
        return out
    real = sysdev.resolve()
    disk = real if (real / "queue").exists() else real.parent  # a partition's parent is the disk
    out["name"] = disk.name
    out["size_gib"] = round(int(read_text(disk / "size", "0")) * 512 / GiB, 1)
    out["rotational"] = read_text(disk / "queue/rotational")
    out["model"] = read_text(disk / "device/model")
    drv = disk / "device/driver"
    out["driver"] = os.path.basename(os.readlink(drv)) if drv.exists() else None
    out["scheduler"] = read_text(disk / "queue/scheduler")
    return out


def describe_machine(model_path):
    cpu = None
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu is None:
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    mem = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        mem[k] = int(v.split()[0]) * 1024
    swaps = Path("/proc/swaps").read_text().splitlines()[1:]
    return {
        "cpu": cpu,
        "cpu_flags": sorted(flags & {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                     "avx512_vnni", "avx_vnni", "avx512_bf16"}),
        "logical_cpus": os.cpu_count(),
        "ram_gib": round(mem.get("MemTotal", 0) / GiB, 1),
        "swap_devices": len(swaps),
        "kernel": platform.release(),
        "os": read_text("/etc/os-release", "").split("PRETTY_NAME=")[-1].split("\n")[0].strip('"') or None,
        "disk": describe_disk(model_path),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------
# memory cgroups


class Cgroups:
    """Creates one memory cgroup per run (v1 memory controller, or v2 with memory enabled)."""

    V1 = Path("/sys/fs/cgroup/memory")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self):
        if os.geteuid() != 0:
            raise HarnessError(
                "the peer benchmark needs root: it puts every run in a memory cgroup "
                "(same cap for both engines, page cache included) and that needs write access to "
                "/sys/fs/cgroup. Rerun as root, e.g. `sudo benches/peer/run.sh ...` "
                "(or `run.sh --dry-run` to see the plan without running anything)."
            )
        if (self.V1 / "memory.limit_in_bytes").exists():
            self.version = 1
            self.base = self.V1
        elif "memory" in (read_text(self.V2 / "cgroup.controllers") or "").split():
            self.version = 2
            self.base = self.V2 / "flashstream-peer"
            try:
                self._enable_v2()
            except OSError as e:
                raise HarnessError(f"cannot set up cgroup v2 memory control under {self.base} ({e}); "
                                   "the memory controller must be delegable from the root cgroup") from e
        else:
            raise HarnessError(
                "no memory cgroup controller found (neither /sys/fs/cgroup/memory/memory.limit_in_bytes "
                "for cgroup v1 nor 'memory' in /sys/fs/cgroup/cgroup.controllers for v2); "
                "mount one or boot with the memory controller enabled"
            )
        self.swap_note = self._check_swap()
        self.counter = 0

    def _enable_v2(self):
        root_ctl = self.V2 / "cgroup.subtree_control"
        if "memory" not in (read_text(root_ctl) or "").split():
            root_ctl.write_text("+memory")
        self.base.mkdir(exist_ok=True)
        ctl = self.base / "cgroup.subtree_control"
        if "memory" not in (read_text(ctl) or "").split():
            ctl.write_text("+memory")

    def _check_swap(self):
        swaps = Path("/proc/swaps").read_text().splitlines()[1:]
        if not swaps:
            return "swap is off"
        if self.version == 1 and (self.V1 / "memory.memsw.limit_in_bytes").exists():
            return "swap on; memory+swap limited per run (memory.memsw.limit_in_bytes = cap)"
        if self.version == 2:
            return "swap on; memory.swap.max = 0 per run"
        raise HarnessError(
            "swap is on and this kernel cannot limit memory+swap per cgroup (no memory.memsw.*; "
            "boot with swapaccount=1), so a capped run could hide memory in swap. "
            "Turn swap off for the benchmark (`swapoff -a`) or enable swap accounting."
        )

    def describe(self):
        return {"version": self.version, "base": str(self.base), "swap": self.swap_note}

    def create(self, limit):
        self.counter += 1
        path = self.base / f"flashstream-peer-{os.getpid()}-{self.counter}"
        path.mkdir()
        cg = Cgroup(self.version, path, limit)
        try:
            cg.configure()
        except OSError:
            cg.remove()
            raise
        return cg


class Cgroup:
    def __init__(self, version, path, limit):
        self.version, self.path, self.limit = version, path, limit
        self.notes = []

    def _w(self, name, value, optional=False):
        try:
            (self.path / name).write_text(str(value))
        except OSError as e:
            if not optional:
                raise HarnessError(f"cannot write {value} to {self.path / name}: {e}") from e
            self.notes.append(f"{name}: {e.strerror}")

    def configure(self):
        if self.version == 1:
            self._w("memory.swappiness", 0, optional=True)
            if self.limit is not None:
                self._w("memory.limit_in_bytes", self.limit)
                if (self.path / "memory.memsw.limit_in_bytes").exists():
                    self._w("memory.memsw.limit_in_bytes", self.limit, optional=True)
        else:
            if self.limit is not None:
                self._w("memory.max", self.limit)
            if (self.path / "memory.swap.max").exists():
                self._w("memory.swap.max", 0, optional=True)
            self._w("memory.oom.group", 1, optional=True)

    def procs_file(self):
        return str(self.path / "cgroup.procs")

    def oom_kills(self):
        f = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (read_text(self.path / f) or "").splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
        return None

    def stats(self):
        if self.version == 1:
            peak = read_text(self.path / "memory.max_usage_in_bytes")
            limit_hits = read_text(self.path / "memory.failcnt")
        else:
            peak = read_text(self.path / "memory.peak")
            limit_hits = None
            for line in (read_text(self.path / "memory.events") or "").splitlines():
                if line.startswith("max "):
                    limit_hits = line.split()[1]
        return {
            "peak_memory_bytes": int(peak) if peak else None,
            "oom_kills": self.oom_kills(),
            "limit_hits": int(limit_hits) if limit_hits else None,
        }

    def kill_all(self):
        for pid in (read_text(self.path / "cgroup.procs") or "").split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self):
        for _ in range(50):
            self.kill_all()
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        log(f"warning: could not remove cgroup {self.path}")


# ---------------------------------------------------------------------------------------
# page cache and device


def drop_from_page_cache(path):
    """sync, then POSIX_FADV_DONTNEED over the whole file; returns the fraction still cached."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return cached_fraction(path)


def processes_mapping(path):
    """pids (and names) of processes that have the file mapped: their pages cannot be dropped."""
    target = os.path.realpath(path)
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if any(line.rstrip().endswith(target) for line in (d / "maps").read_text().splitlines()):
                found.append(f"{d.name} ({read_text(d / 'comm', '?')})")
        except OSError:
            continue
    return found


_libc = None


def cached_fraction(path):
    """Fraction of the file's pages in the page cache (mincore on a read-only mapping)."""
    global _libc
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    npages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = ctypes.create_string_buffer(npages)
            if _libc.mincore(addr, size, vec) != 0:
                return None
            resident = sum(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    return resident / npages


def device_read_gbps(path, limit=1 * GiB, chunk=8 * MiB):
    """Sequential O_DIRECT read of (up to `limit` bytes of) the file: the device's bandwidth."""
    buf = mmap.mmap(-1, chunk)  # page aligned, as O_DIRECT wants
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        return {"error": f"O_DIRECT open failed: {e.strerror}"}
    total = 0
    t0 = time.perf_counter()
    try:
        while total < limit:
            n = os.preadv(fd, [buf], total)
            if n <= 0:
                break
            total += n
            if n < chunk:
                break
    except OSError as e:
        return {"error": f"O_DIRECT read failed: {e.strerror}"}
    finally:
        os.close(fd)
        buf.close()
    dt = time.perf_counter() - t0
    return {"bytes": total, "seconds": dt, "gbps": total / dt / 1e9 if dt > 0 else None}


# ---------------------------------------------------------------------------------------
# running one process in a cgroup


def run_process(cmd, cg, stdout_path, stderr_path, timeout, env=None):
    """Run cmd (in cg if given), wait with a timeout; returns a dict; never raises on a kill."""
    timed_out = threading.Event()
    procs = cg.procs_file() if cg else None

    def enter_cgroup():  # runs in the child between fork and exec
        if procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=enter_cgroup,
                             start_new_session=True, env=env)

        def on_timeout():
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, on_timeout)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if cg:
        cg.kill_all()  # grandchildren, if any
    return {
        "exit_status": p.returncode,
        "timed_out": timed_out.is_set(),
        "wall_s": wall,
        "bytes_read": ru.ru_inblock * 512,
        "major_faults": ru.ru_majflt,
        "max_rss_bytes": ru.ru_maxrss * 1024,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
    }


def parse_json_stdout(path):
    text = Path(path).read_text(errors="replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def tail(path, n=12):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


LLAMA_LOG_PATTERNS = [
    ("load_mode", re.compile(r"load_mode = (\w+)")),
    ("repack_buffer_mib", re.compile(r"CPU_REPACK model buffer size =\s*([0-9.]+) MiB")),
    ("cpu_buffer_mib", re.compile(r"\bCPU model buffer size =\s*([0-9.]+) MiB")),
    ("mapped_buffer_mib", re.compile(r"CPU_Mapped model buffer size =\s*([0-9.]+) MiB")),
    ("direct_io_fallback", re.compile(r"(Falling back to buffered I/O)")),
]


def llama_log_notes(stderr_path):
    text = Path(stderr_path).read_text(errors="replace")
    notes = {}
    for key, rx in LLAMA_LOG_PATTERNS:
        found = rx.findall(text)
        if found:
            v = found[-1]
            notes[key] = float(v) if key.endswith("_mib") else v
    return notes


# ---------------------------------------------------------------------------------------
# the benchmark


class Bench:
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

    # --- setup -------------------------------------------------------------------------

    def venv_python(self):
        return Path(self.a.venv) / "bin/python"

    def start_install(self):
        if "llama" not in self.a.engines or self.a.fake_llama:
            return
        log(f"llama.cpp: ensuring llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} in {self.a.venv} (background)")
        self.install_log = self.out / "install.log"
        env = dict(os.environ, LLAMA_CPP_PYTHON_VERSION=LLAMA_CPP_PYTHON_VERSION)
        self.install_proc = subprocess.Popen(["bash", str(INSTALLER), str(self.a.venv)], env=env,
                                             stdout=open(self.install_log, "wb"), stderr=subprocess.STDOUT)

    def wait_install(self):
        if self.install_proc is None:
            return
        if self.install_proc.poll() is None:
            log(f"waiting for the llama.cpp build to finish (log: {self.install_log}, "
                f"build output: {self.a.venv}.build.log)")
        rc = self.install_proc.wait()
        self.install_proc = None
        if rc != 0:
            raise HarnessError(f"installing llama-cpp-python failed (exit {rc}):\n{tail(self.install_log, 30)}")

    def llama_info(self):
        if self.a.fake_llama:
            return {"llama_cpp_python": "fake", "capabilities": {}}
        r = sh([str(self.venv_python()), str(RUNNER), "info"])
        if r.returncode != 0:
            raise HarnessError(f"llama_runner.py info failed:\n{r.stderr[-2000:]}")
        return json.loads(r.stdout)

    def flashstream_cmd(self):
        fs = Path(self.a.flashstream)
        if fs.suffix == ".py":
            return [sys.executable, str(fs)]
        return [str(fs)]

    def ensure_flashstream(self):
        fs = Path(self.a.flashstream)
        if fs.exists():
            return
        if fs.resolve() != (REPO / "target/release/flashstream").resolve():
            raise HarnessError(f"--flashstream {fs} does not exist")
        log("building flashstream: cargo build --release -p flashstream-tools")
        r = subprocess.run(["cargo", "build", "--release", "-p", "flashstream-tools"], cwd=REPO)
        if r.returncode != 0 or not fs.exists():
            raise HarnessError("cargo build --release -p flashstream-tools failed; build it or pass --flashstream")

    def versions(self, llama_info):
        v = {"llama_cpp_python": llama_info.get("llama_cpp_python"),
             "llama_system_info": llama_info.get("system_info"),
             "llama_capabilities": {k: v for k, v in llama_info.get("capabilities", {}).items()
                                    if k != "model_params_fields"}}
        rev = sh(["git", "-C", str(REPO), "rev-parse", "HEAD"])
        dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
        v["flashstream_git_rev"] = rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") \
            if rev.returncode == 0 else None
        if "flashstream" in self.a.engines or self.needs_mkmodel():
            r = sh(self.flashstream_cmd() + ["--version"])
            v["flashstream_version"] = (r.stdout or r.stderr).strip() if r.returncode == 0 else None
            v["flashstream_binary"] = str(self.a.flashstream)
        return v

    # --- models ------------------------------------------------------------------------

    def model_specs(self):
        a = self.a
        d = Path(a.model_dir)
        specs = []
        for name in a.models:
            if name == "dense":
                size = a.dense_size or 3 * a.cap
                out = d / f"dense-{fmt_size(size)}-{a.dense_type}-seed{a.seed}.gguf"
                gen = ["mkmodel", "dense", str(out), "--size", fmt_size(size), "--type", a.dense_type,
                       "--seed", str(a.seed)]
                if a.dense_model:
                    out, gen = Path(a.dense_model), None
                    size = out.stat().st_size if out.exists() else size
                specs.append(dict(name="dense", path=out, cap=a.cap, size=size, mkcmd=gen,
                                  desc=(f"{out.name}" if a.dense_model else f"random llama, {a.dense_type}")
                                  + f", {size / GiB:.2f} GiB (x{size / a.cap:.1f} cap)"))
            elif name == "moe":
                size = a.moe_size or 4 * a.cap
                out = d / f"moe-{a.moe_arch}-{fmt_size(size)}-e{a.experts}k{a.top_k}-{a.moe_type}.gguf"
                gen = ["mkmodel", "moe", str(out), "--arch", a.moe_arch, "--size", fmt_size(size),
                       "--experts", str(a.experts), "--top-k", str(a.top_k), "--type", a.moe_type]
                if a.moe_model:
                    out, gen = Path(a.moe_model), None
                    size = out.stat().st_size if out.exists() else size
                specs.append(dict(name="moe", path=out, cap=a.cap, size=size, mkcmd=gen,
                                  desc=(f"{out.name}" if a.moe_model else
                                        f"random {a.moe_arch}, {a.experts} experts top-{a.top_k}, {a.moe_type}")
                                  + f", {size / GiB:.2f} GiB (x{size / a.cap:.1f} cap)"))
            elif name == "upcycle":
                src = Path(a.smollm)
                out = d / f"upcycle-{src.stem}-e{a.up_experts}k{a.up_top_k}-seed{a.seed}.gguf"
                gen = ["mkmodel", "upcycle", str(src), str(out), "--experts", str(a.up_experts),
                       "--top-k", str(a.up_top_k), "--seed", str(a.seed)]
                specs.append(dict(name="upcycle", path=out, cap=a.upcycle_cap, size=None, mkcmd=gen,
                                  desc=f"{src.name} upcycled to {a.up_experts} experts top-{a.up_top_k}"))
            elif name in ("smollm", "gemma"):
                p = Path(a.smollm if name == "smollm" else a.gemma)
                specs.append(dict(name=name, path=p, cap=a.real_cap, size=None, mkcmd=None,
                                  desc=f"{p.name} (real model" + (", fits in memory)" if a.real_cap is None else ")")))
            else:
                raise HarnessError(f"unknown model {name!r}: use dense, moe, upcycle, smollm, gemma")
        for spec in specs:
            spec["n"] = a.gen if spec["cap"] is None else a.gen_capped
        return specs

    def needs_mkmodel(self):
        a = self.a
        return ("dense" in a.models and not a.dense_model) or ("moe" in a.models and not a.moe_model) \
            or "upcycle" in a.models

    def generator_fake(self):
        return Path(self.a.flashstream).name.startswith("fake")

    def ensure_model(self, spec):
        path = spec["path"]
        if spec["mkcmd"] is None:
            if not path.exists():
                raise HarnessError(f"model {path} not found (the real models come from tools/fetch-models.sh)")
            return {"reused": True}
        sidecar = path.with_suffix(".gguf.json")
        want = {"args": spec["mkcmd"][1:], "fake": self.generator_fake()}
        if path.exists() and sidecar.exists():
            try:
                have = json.loads(sidecar.read_text())
            except json.JSONDecodeError:
                have = {}
            size = path.stat().st_size
            ok_size = spec["size"] is None or 0.75 * spec["size"] <= size <= 1.33 * spec["size"]
            if have.get("args") == want["args"] and have.get("fake") == want["fake"] \
                    and have.get("bytes") == size and ok_size:
                log(f"reusing {path} ({size / MiB:.0f} MiB)")
                return {"reused": True}
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.flashstream_cmd() + spec["mkcmd"]
        log(f"generating {spec['name']}: {shlex.join(cmd)}")
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not path.exists():
            raise HarnessError(f"`{shlex.join(cmd)}` failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
        size = path.stat().st_size
        if not want["fake"]:
            with open(path, "rb") as f:
                if f.read(4) != b"GGUF":
                    raise HarnessError(f"{path} written by mkmodel is not a GGUF file")
        if spec["size"] and not 0.75 * spec["size"] <= size <= 1.33 * spec["size"]:
            log(f"warning: {path} is {size / MiB:.0f} MiB, asked for {spec['size'] / MiB:.0f} MiB")
        want.update(bytes=size, seconds=time.perf_counter() - t0)
        sidecar.write_text(json.dumps(want, indent=1))
        return {"reused": False, "generate_s": want["seconds"]}

    # --- prompt ------------------------------------------------------------------------

    def make_prompt(self, spec):
        """Shortest prefix (in words) of the base text with >= --prompt-tokens llama.cpp tokens."""
        target = self.a.prompt_tokens
        words = BASE_PROMPT.split()
        while len(words) < 4 * target:
            words = words + BASE_PROMPT.split()
        texts = [" ".join(words[:k]) for k in range(1, len(words) + 1)]
        # without llama.cpp at all (flashstream only, no venv yet), count UTF-8 bytes instead
        fake = self.a.fake_llama or ("llama" not in self.a.engines and not self.venv_python().exists())
        cmd = [sys.executable if fake else str(self.venv_python()), str(RUNNER)] + (["--fake"] if fake else [])
        cmd += ["tokenize", "--model", str(spec["path"])]
        r = subprocess.run(cmd, input=json.dumps(texts), capture_output=True, text=True)
        if r.returncode != 0:
            raise HarnessError(f"tokenizing the prompt with llama.cpp failed for {spec['path']}:\n{r.stderr[-2000:]}")
        counts = json.loads(r.stdout)
        for text, n in zip(texts, counts):
            if n >= target:
                return text, n
        return texts[-1], counts[-1]

    # --- runs --------------------------------------------------------------------------

    def run_one(self, spec, engine, variant, pair, prompt_file, prompt_text):
        self.seq += 1
        a = self.a
        tag = f"{self.seq:03d}-{spec['name']}-{engine}-{variant}-p{pair}"
        out_p, err_p = self.logs / f"{tag}.out", self.logs / f"{tag}.err"
        cap = spec["cap"]
        if engine == "flashstream":
            cmd = self.flashstream_cmd() + ["run", str(spec["path"]), "-p", prompt_text, "-n", str(spec["n"]),
                                            "--temp", "0", "--ignore-eos", "--threads", str(a.threads)]
            if cap is not None:
                cmd += ["--mem", fmt_size(max(cap - a.fs_allowance, 16 * MiB))]
            cmd += ["--json"]
        else:
            py = sys.executable if a.fake_llama else str(self.venv_python())
            cmd = [py, str(RUNNER)] + (["--fake"] if a.fake_llama else []) + [
                "run", "--model", str(spec["path"]), "--variant", variant, "--threads", str(a.threads),
                "--prompt-file", str(prompt_file), "-n", str(spec["n"])]
        cached = drop_from_page_cache(spec["path"])
        mappers = processes_mapping(spec["path"]) if cached and cached > 0.05 else []
        if cached and cached > 0.05:
            log(f"WARNING: {cached:.0%} of {spec['path']} is still in the page cache after "
                f"POSIX_FADV_DONTNEED; mapped by: {', '.join(mappers) or 'no process found'}. "
                "This run starts warm: stop those processes for a cold-start figure.")
        cg = self.cg.create(cap)
        try:
            env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
            oom0 = cg.oom_kills() or 0
            pr = run_process(cmd, cg, out_p, err_p, a.timeout, env=env)
            cgs = cg.stats()
            notes = list(cg.notes)
        finally:
            cg.remove()
        rec = {
            "model": spec["name"], "engine": engine, "variant": variant, "pair": pair,
            "cap_bytes": cap, "threads": a.threads, "gen_tokens_requested": spec["n"],
            "cached_fraction_before": cached, "file_mapped_by": mappers, **pr, **cgs, "cgroup_notes": notes,
            "stdout_log": str(out_p), "stderr_log": str(err_p),
            "command": shlex.join(c if len(c) < 200 else c[:60] + "..." for c in cmd),
        }
        oom = (cgs["oom_kills"] or 0) > oom0
        status = pr["exit_status"]
        if pr["timed_out"]:
            rec.update(result="killed", kill_reason=f"timeout after {a.timeout:g}s")
        elif status == -signal.SIGKILL:
            rec.update(result="killed", kill_reason="oom" if oom else "SIGKILL")
        elif status < 0:
            rec.update(result="killed", kill_reason=f"signal {-status}" + (" (oom)" if oom else ""))
        elif engine == "llama" and status == 3:
            rec.update(result="unsupported", error=(parse_json_stdout(out_p) or {}).get("unsupported"))
        elif status != 0:
            rec.update(result="error", error=tail(err_p) or f"exit status {status}, nothing on stderr")
        else:
            rec["result"] = "ok"
        rec["killed"] = rec["result"] == "killed"
        js = parse_json_stdout(out_p) if rec["result"] == "ok" else None
        if rec["result"] == "ok" and not (js and isinstance(js.get("stats"), dict)):
            rec.update(result="error", error="exit 0 but no JSON with 'stats' on stdout: " + tail(out_p, 3))
        if js:
            st = js["stats"]
            rec.update(
                prompt_tokens=st.get("prompt_tokens"),
                generated_tokens=st.get("generated_tokens"),
                prompt_tokens_per_s=st.get("prompt_tokens_per_s"),
                decode_tokens_per_s=st.get("decode_tokens_per_s"),
                ttft_s=st.get("time_to_first_token_s"),
                load_s=st.get("load_s"),
                tokens=js.get("tokens"),
                engine_stats=st,
            )
            if engine == "llama":
                rec["llama_params"] = js.get("params")
        if rec["peak_memory_bytes"] is None:  # kernel without memory.peak: the process's own RSS peak
            rec["peak_memory_bytes"] = pr["max_rss_bytes"]
            rec["peak_source"] = "rusage max RSS (this kernel's cgroup has no peak counter; page cache not included)"
        else:
            rec["peak_source"] = "cgroup"
        if engine == "llama" and not a.fake_llama:
            rec["llama_log"] = llama_log_notes(err_p)
        shown = {k: rec.get(k) for k in ("prompt_tokens_per_s", "decode_tokens_per_s", "ttft_s")}
        peak = rec["peak_memory_bytes"]
        log(f"{tag}: {rec['result']}{' (' + rec['kill_reason'] + ')' if rec['killed'] else ''} "
            + " ".join(f"{k}={v:.3g}" for k, v in shown.items() if isinstance(v, (int, float)))
            + (f" peak={peak / MiB:.0f}MiB" if peak else "") + f" wall={pr['wall_s']:.1f}s")
        if rec["result"] == "error":
            log(f"  error: {rec['error'].splitlines()[-1] if rec['error'] else '?'} (see {err_p})")
        self.runs.append(rec)
        self.save()
        return rec

    def skip(self, spec, engine, variant, pair, first):
        """The cap killed this setting in pair 0 (OOM, or thrashing past --timeout): record, do not
        rerun."""
        why = "OOM-killed" if first.get("kill_reason") == "oom" else f"killed ({first.get('kill_reason')})"
        self.runs.append({"model": spec["name"], "engine": engine, "variant": variant, "pair": pair,
                          "cap_bytes": spec["cap"], "threads": self.a.threads, "gen_tokens_requested": spec["n"],
                          "result": "skipped", "killed": False, "peak_memory_bytes": None,
                          "note": f"{why} in pair {first['pair']}; not rerun (--rerun-killed reruns it)"})
        log(f"{spec['name']}-{engine}-{variant}-p{pair}: skipped ({why} in pair {first['pair']})")

    def fs_device_bench(self, spec):
        """One `flashstream bench` under the cap: the device bandwidth and flashstream's own ceiling."""
        a = self.a
        cap = spec["cap"]
        tag = f"bench-{spec['name']}"
        cmd = self.flashstream_cmd() + ["bench", str(spec["path"]), "--mem",
                                        fmt_size(max(cap - a.fs_allowance, 16 * MiB)), "-n", str(spec["n"]),
                                        "--prompt-len", str(a.prompt_tokens), "--threads", str(a.threads), "--json"]
        drop_from_page_cache(spec["path"])
        cg = self.cg.create(cap)
        try:
            pr = run_process(cmd, cg, self.logs / f"{tag}.out", self.logs / f"{tag}.err", a.timeout)
            pr.update(cg.stats())
        finally:
            cg.remove()
        pr["json"] = parse_json_stdout(self.logs / f"{tag}.out") if pr["exit_status"] == 0 else None
        if pr["exit_status"] != 0:
            pr["error"] = tail(self.logs / f"{tag}.err")
            log(f"flashstream bench on {spec['name']} failed (exit {pr['exit_status']}); see {self.logs / tag}.err")
        return pr

    # --- orchestration -----------------------------------------------------------------

    def plan(self):
        lines = []
        for spec in self.model_specs():
            cap = "no cap" if spec["cap"] is None else fmt_size(spec["cap"])
            lines.append(f"{spec['name']}: {spec['desc']}; {spec['path']}; cap {cap}")
            if spec["mkcmd"]:
                lines.append(f"  generate/reuse: {shlex.join(self.flashstream_cmd() + spec['mkcmd'])}")
            order = self.order()
            for pair in range(self.a.pairs):
                lines.append(f"  pair {pair}: " + "  ".join(f"{e}:{v}" for e, v in order))
        return lines

    def order(self):
        o = []
        if "flashstream" in self.a.engines:
            o.append(("flashstream", "default"))
        if "llama" in self.a.engines:
            o += [("llama", v) for v in self.a.variants]
        return o

    def run(self):
        a = self.a
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.t_start = time.perf_counter()
        specs = self.model_specs()
        self.start_install()
        if "flashstream" in a.engines or self.needs_mkmodel():
            self.ensure_flashstream()
        for spec in specs:
            self.models[spec["name"]] = {"path": str(spec["path"]), "desc": spec["desc"], "cap_bytes": spec["cap"],
                                         **self.ensure_model(spec)}
            self.models[spec["name"]]["bytes"] = spec["path"].stat().st_size
        self.machine = describe_machine(specs[0]["path"])
        self.machine["cgroup"] = self.cg.describe()
        self.wait_install()
        self.llama = self.llama_info() if "llama" in a.engines else {}
        self.vers = self.versions(self.llama)
        self.save()
        for spec in specs:
            info = self.models[spec["name"]]
            text, n = self.make_prompt(spec)
            pf = self.out / f"prompt-{spec['name']}.txt"
            pf.write_text(text)
            info.update(prompt_file=str(pf), prompt_tokens_llama=n)
            if spec["cap"] is not None:
                drop_from_page_cache(spec["path"])
                info["device_read_odirect"] = device_read_gbps(spec["path"])
                if "flashstream" in a.engines and not a.no_fs_bench:
                    info["flashstream_bench"] = self.fs_device_bench(spec)
            log(f"== {spec['name']}: {spec['desc']}, {info['bytes'] / MiB:.0f} MiB, "
                f"cap {'none' if spec['cap'] is None else fmt_size(spec['cap'])}, prompt {n} tokens, "
                f"{spec['n']} generated, {a.threads} threads, {a.pairs} pairs")
            for pair in range(a.pairs):
                for engine, variant in self.order():
                    first = next((r for r in self.runs if r["model"] == spec["name"] and r["engine"] == engine
                                  and r["variant"] == variant), None)
                    reason = (first or {}).get("kill_reason") or ""
                    if (reason == "oom" or reason.startswith("timeout")) and not a.rerun_killed:
                        self.skip(spec, engine, variant, pair, first)
                    else:
                        self.run_one(spec, engine, variant, pair, pf, text)
        self.finished = datetime.datetime.now(datetime.timezone.utc)
        self.elapsed_s = time.perf_counter() - self.t_start
        self.save()
        md = self.markdown()
        (self.out / "results.md").write_text(md)
        print(md)
        log(f"wrote {self.out / 'results.json'} and {self.out / 'results.md'}")

    # --- results -----------------------------------------------------------------------

    def pair_ratios(self):
        out = []
        for mname in self.models:
            fs = {r["pair"]: r for r in self.runs if r["model"] == mname and r["engine"] == "flashstream"}
            for r in self.runs:
                if r["model"] != mname or r["engine"] != "llama":
                    continue
                f = fs.get(r["pair"])
                if f is None:
                    continue
                row = {"model": mname, "variant": r["variant"], "pair": r["pair"]}
                if f["result"] != "ok" or r["result"] != "ok":
                    row["note"] = f"flashstream {f['result']}, llama.cpp {r['result']}"
                    row.update(decode_ratio=None, prompt_ratio=None, ttft_ratio=None)
                else:
                    def ratio(x, y):
                        return x / y if x and y else None
                    row.update(
                        decode_ratio=ratio(f.get("decode_tokens_per_s"), r.get("decode_tokens_per_s")),
                        prompt_ratio=ratio(f.get("prompt_tokens_per_s"), r.get("prompt_tokens_per_s")),
                        ttft_ratio=ratio(r.get("ttft_s"), f.get("ttft_s")),  # > 1: flashstream is faster
                        same_prompt_tokens=f.get("prompt_tokens") == r.get("prompt_tokens"),
                        same_tokens=f.get("tokens") == r.get("tokens"),
                    )
                out.append(row)
        return out

    def summary(self):
        rows = []
        ratios = self.pair_ratios()
        for mname in self.models:
            for engine, variant in self.order():
                rs = [r for r in self.runs if r["model"] == mname and r["engine"] == engine and r["variant"] == variant]
                if not rs:
                    continue
                ok = [r for r in rs if r["result"] == "ok"]
                rr = [x["decode_ratio"] for x in ratios if x["model"] == mname and x["variant"] == variant
                      and engine == "llama"]
                rows.append({
                    "model": mname, "engine": engine, "variant": variant, "runs": len(rs),
                    "ok": len(ok), "killed": sum(r["killed"] for r in rs),
                    "errors": sum(r["result"] in ("error", "unsupported") for r in rs),
                    "skipped": sum(r["result"] == "skipped" for r in rs),
                    "kill_reasons": sorted({r["kill_reason"] for r in rs if r["killed"]}),
                    "prompt_tokens": median([r.get("prompt_tokens") for r in ok]),
                    "prompt_tokens_per_s": median([r.get("prompt_tokens_per_s") for r in ok]),
                    "decode_tokens_per_s": median([r.get("decode_tokens_per_s") for r in ok]),
                    "ttft_s": median([r.get("ttft_s") for r in ok]),
                    "wall_s": median([r.get("wall_s") for r in ok]),
                    "peak_memory_bytes": max([r["peak_memory_bytes"] for r in rs if r.get("peak_memory_bytes")],
                                             default=None),
                    "bytes_read_per_decode_token": median([
                        r["bytes_read"] / r["gen_tokens_requested"] for r in ok if r.get("bytes_read")]),
                    "decode_ratio_fs_over_this": median(rr),
                    "unsupported": next((r.get("error") for r in rs if r["result"] == "unsupported"), None),
                })
        return rows

    def save(self):
        doc = {
            "schema": "flashstream-peer/1",
            "started": getattr(self, "started", None) and self.started.isoformat(),
            "finished": getattr(self, "finished", None) and self.finished.isoformat(),
            "elapsed_s": getattr(self, "elapsed_s", None),
            "command": shlex.join([str(Path(sys.argv[0]))] + sys.argv[1:]),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.a).items()},
            "machine": getattr(self, "machine", None),
            "versions": getattr(self, "vers", None),
            "llama_variants": {v: d for v, d in LLAMA_VARIANTS.items() if v in self.a.variants},
            "models": self.models,
            "runs": self.runs,
            "pair_ratios": self.pair_ratios(),
            "summary": self.summary(),
        }
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(self.out / "results.json")

    def markdown(self):
        m, v, a = self.machine, self.vers, self.a
        disk = m["disk"]
        lines = [
            f"## Peer benchmark: flashstream vs llama.cpp ({self.started:%Y-%m-%d %H:%M} UTC)",
            "",
            f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs; {', '.join(m['cpu_flags'])}), "
            f"{m['ram_gib']} GiB RAM, kernel {m['kernel']}, {m.get('os') or ''}; disk {disk.get('name')} "
            f"({disk.get('driver') or disk.get('model') or '?'}, {disk.get('size_gib')} GiB); "
            f"load average at start {' '.join(f'{x:.2f}' for x in m['load_average_at_start'])}",
            f"- cgroup v{m['cgroup']['version']} memory limit per run (page cache included); {m['cgroup']['swap']}",
            f"- Versions: llama-cpp-python {v.get('llama_cpp_python')} (llama.cpp built from its sdist); "
            f"`{v.get('flashstream_version') or 'flashstream ?'}` at git {v.get('flashstream_git_rev')}",
            f"- Settings: {a.threads} threads, ~{a.prompt_tokens}-token prompt, {a.gen} generated tokens uncapped / "
            f"{a.gen_capped} capped "
            f"(greedy, EOS ignored), {a.pairs} pairs alternating A B A B, page cache dropped before every run; "
            f"flashstream gets `--mem cap - {fmt_size(a.fs_allowance)}`",
            f"- Command: `{shlex.join(['benches/peer/run.sh'] + sys.argv[1:])}` "
            f"({self.elapsed_s / 60:.1f} min in all, model generation and llama.cpp build included)",
            "",
        ]
        for mname, info in self.models.items():
            cap = "no cap" if info["cap_bytes"] is None else f"cap {fmt_size(info['cap_bytes'])}"
            extra = ""
            dev = info.get("device_read_odirect")
            if dev and dev.get("gbps"):
                extra += f"; device O_DIRECT sequential read {dev['gbps']:.2f} GB/s"
            fb = (info.get("flashstream_bench") or {}).get("json") or {}
            if fb.get("theoretical_tokens_per_s"):
                extra += f"; flashstream bench: device {fb.get('device_read_gbps', 0):.2f} GB/s, " \
                         f"theoretical {fb['theoretical_tokens_per_s']:.2f} tok/s"
            lines += [f"### {mname}: {info['desc']}, {info['bytes'] / MiB:.0f} MiB, {cap}{extra}", "",
                      "| engine / setting | runs | killed | prompt tok/s | decode tok/s | TTFT s | peak MiB "
                      "| read MiB/token | decode ratio flashstream/this |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for row in self.summary():
                if row["model"] != mname:
                    continue
                name = "flashstream" if row["engine"] == "flashstream" else f"llama.cpp {row['variant']}"

                def f(x, fmt="{:.2f}"):
                    return "-" if x is None else fmt.format(x)
                killed = str(row["killed"]) + (f" ({', '.join(row['kill_reasons'])})" if row["killed"] else "")
                if row["skipped"]:
                    killed += f", {row['skipped']} skipped"
                if row["errors"]:
                    killed += f", {row['errors']} failed" + (" (unsupported)" if row["unsupported"] else "")
                ratio = row["decode_ratio_fs_over_this"]
                if row["engine"] == "llama" and ratio is None and row["ok"] == 0:
                    ratio_s = "llama.cpp killed" if row["killed"] else "-"
                else:
                    ratio_s = f(ratio)
                if row["engine"] == "flashstream":
                    ratio_s = ""
                lines.append(
                    f"| {name} | {row['runs']} | {killed} | {f(row['prompt_tokens_per_s'])} | "
                    f"{f(row['decode_tokens_per_s'])} | {f(row['ttft_s'], '{:.3f}')} | "
                    f"{f(row['peak_memory_bytes'] and row['peak_memory_bytes'] / MiB, '{:.0f}')} | "
                    f"{f(row['bytes_read_per_decode_token'] and row['bytes_read_per_decode_token'] / MiB, '{:.0f}')} | "
                    f"{ratio_s} |")
            lines.append("")
        lines += [
            "Medians over the runs that finished; peak is the cgroup's peak charge (max over runs, page cache "
            "included; the llama.cpp side includes its Python interpreter). read MiB/token = block-device bytes "
            "read by the process over its whole run / generated tokens. Decode ratio = median of per-pair "
            "ratios (flashstream run i / llama.cpp run i).",
        ]
        warm = [r for r in self.runs if (r.get("cached_fraction_before") or 0) > 0.05]
        if warm:
            models = sorted({r["model"] for r in warm})
            lines.append(f"WARNING: {len(warm)} runs started with the model file still in the page cache "
                         f"(models: {', '.join(models)}; other processes had it mapped, see file_mapped_by in "
                         "results.json): those runs are not cold starts.")
        bad = [x for x in self.pair_ratios() if x.get("same_prompt_tokens") is False]
        if bad:
            lines.append(f"WARNING: the engines tokenized the prompt differently in {len(bad)} pairs "
                         "(see pair_ratios in results.json).")
        return "\n".join(lines) + "\n"


LLAMA_VARIANTS = {
    "default": "llama_model_default_params(): mmap, weight repacking on (use_extra_bufts=true)",
    "norepack": "mmap, use_extra_bufts=false (no repacking into anonymous memory)",
    "dio": "load_mode=LLAMA_LOAD_MODE_DIRECT_IO (O_DIRECT reads into RAM buffers, no mmap)",
    "nommap": "load_mode=LLAMA_LOAD_MODE_NONE (like --no-mmap)",
}


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
