"""The machine side of the peer benchmark: describing the machine and disk, memory cgroups, the
page cache and the device, and running one process in a cgroup."""

import ctypes
import json
import mmap
import os
import platform
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from harness import GiB, HarnessError, MiB, log, read_text

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


