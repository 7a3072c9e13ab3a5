"""flashstream: run language models far larger than memory, from Python.

A ctypes binding of libflashstream (ffi/include/flashstream.h). The library is found through
the FLASHSTREAM_LIB environment variable, then next to this package, then the system paths.

    import flashstream
    with flashstream.Engine("model.gguf", mem="512MiB", threads=2) as eng:
        for piece in eng.generate("Hello", max_tokens=16):
            print(piece, end="")
        eng.set_budget("256MiB")
"""

import ctypes
import ctypes.util
import os
import queue
import re
import sys
import threading

__all__ = ["Engine", "Error", "parse_size", "library_path"]
__version__ = "0.1.0"


class Error(Exception):
    """An error reported by libflashstream (its message says what is wrong and how to fix it).

    `status` is the C status code (see flashstream.h)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


# Status codes (flashstream_status).
OK = 0
ERR_CANCELLED = 8
ERR_BUFFER_TOO_SMALL = 9

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}


def parse_size(size):
    """Bytes from an int or a size string as the CLI takes it ("512MiB", "1.5G", "4096")."""
    if isinstance(size, bool):
        raise Error("a size must be an int of bytes or a string such as '512MiB'")
    if isinstance(size, int):
        if size < 1:
            raise Error("invalid size %d: must be at least 1 byte" % size)
        return size
    if not isinstance(size, str):
        raise Error("a size must be an int of bytes or a string such as '512MiB', not %r" % (size,))
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", size)
    if not m or m.group(2).lower() not in _UNITS:
        raise Error("invalid size %r: expected a number with an optional unit such as 512MiB or 12GiB" % size)
    value = round(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise Error("invalid size %r: must be at least 1 byte" % size)
    return value


def library_path():
    """Where libflashstream is loaded from."""
    env = os.environ.get("FLASHSTREAM_LIB")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("libflashstream.so", "libflashstream.dylib", "flashstream.dll"):
        p = os.path.join(here, name)
        if os.path.exists(p):
            return p
    found = ctypes.util.find_library("flashstream")
    if found:
        return found
    raise Error(
        "libflashstream not found: set FLASHSTREAM_LIB to its path "
        "(cargo build --release -p flashstream-ffi builds target/release/libflashstream.so)"
    )


class _EngineParams(ctypes.Structure):
    _fields_ = [
        ("mem_bytes", ctypes.c_uint64),
        ("n_threads", ctypes.c_uint32),
        ("n_ctx", ctypes.c_uint32),
        ("progress_callback", ctypes.c_void_p),
        ("progress_user_data", ctypes.c_void_p),
    ]


class _SamplingParams(ctypes.Structure):
    _fields_ = [
        ("max_tokens", ctypes.c_uint32),
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_uint32),
        ("top_p", ctypes.c_float),
        ("min_p", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("repeat_last_n", ctypes.c_uint32),
        ("frequency_penalty", ctypes.c_float),
        ("presence_penalty", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("stop", ctypes.POINTER(ctypes.c_char_p)),
        ("n_stop", ctypes.c_size_t),
        ("stop_at_eog", ctypes.c_bool),
        ("add_special", ctypes.c_bool),
    ]


class _Generation(ctypes.Structure):
    _fields_ = [
        ("n_prompt_tokens", ctypes.c_uint32),
        ("n_generated", ctypes.c_uint32),
        ("stop_reason", ctypes.c_uint32),
        ("prompt_tokens_per_s", ctypes.c_double),
        ("decode_tokens_per_s", ctypes.c_double),
    ]


class _Stats(ctypes.Structure):
    _fields_ = [
        ("bytes_read", ctypes.c_uint64),
        ("load_bytes", ctypes.c_uint64),
        ("load_seconds", ctypes.c_double),
        ("stall_seconds", ctypes.c_double),
        ("peak_memory_bytes", ctypes.c_uint64),
        ("current_memory_bytes", ctypes.c_uint64),
        ("budget_bytes", ctypes.c_uint64),
        ("planned_bytes", ctypes.c_uint64),
        ("min_budget_bytes", ctypes.c_uint64),
        ("n_ctx", ctypes.c_uint32),
        ("prompt_tokens_per_s", ctypes.c_double),
        ("decode_tokens_per_s", ctypes.c_double),
        ("reads", ctypes.c_uint64),
        ("expert_leases", ctypes.c_uint64),
        ("expert_hits", ctypes.c_uint64),
    ]


class _ChatMessage(ctypes.Structure):
    _fields_ = [("role", ctypes.c_char_p), ("content", ctypes.c_char_p)]


_PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_float, ctypes.c_void_p)
_TOKEN_FN = ctypes.CFUNCTYPE(
    ctypes.c_bool, ctypes.POINTER(ctypes.c_char), ctypes.c_size_t, ctypes.c_int32, ctypes.c_void_p
)

_lib = None
_lib_lock = threading.Lock()


def _load():
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        lib = ctypes.CDLL(library_path())
        vp, st, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        sigs = {
            "flashstream_last_error": ([], ctypes.c_char_p),
            "flashstream_version": ([], ctypes.c_char_p),
            "flashstream_engine_default_params": ([], _EngineParams),
            "flashstream_sampling_default_params": ([], _SamplingParams),
            "flashstream_engine_open": ([ctypes.c_char_p, ctypes.POINTER(_EngineParams), ctypes.POINTER(vp)], st),
            "flashstream_engine_free": ([vp], st),
            "flashstream_engine_plan": ([vp, ctypes.c_char_p, sz, ctypes.POINTER(sz)], st),
            "flashstream_engine_set_budget": ([vp, ctypes.c_uint64], st),
            "flashstream_engine_set_budget_auto": ([vp, ctypes.c_double, ctypes.c_uint64,
                                                    ctypes.c_uint64], st),
            "flashstream_engine_stats": ([vp, ctypes.POINTER(_Stats)], st),
            "flashstream_tokenize": ([vp, ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool,
                                      ctypes.POINTER(ctypes.c_int32), sz, ctypes.POINTER(sz)], st),
            "flashstream_detokenize": ([vp, ctypes.POINTER(ctypes.c_int32), sz, ctypes.c_char_p, sz,
                                        ctypes.POINTER(sz)], st),
            "flashstream_chat_apply_template": ([vp, ctypes.POINTER(_ChatMessage), sz, ctypes.c_bool,
                                                 ctypes.POINTER(ctypes.c_void_p)], st),
            "flashstream_string_free": ([vp], None),
            "flashstream_session_new": ([vp, ctypes.POINTER(vp)], st),
            "flashstream_session_free": ([vp], st),
            "flashstream_session_reset": ([vp], st),
            "flashstream_session_cancel": ([vp], st),
            "flashstream_session_generate": ([vp, ctypes.c_char_p, ctypes.POINTER(_SamplingParams),
                                              _TOKEN_FN, vp, ctypes.POINTER(_Generation)], st),
            "flashstream_session_chat": ([vp, ctypes.POINTER(_ChatMessage), sz,
                                          ctypes.POINTER(_SamplingParams), _TOKEN_FN, vp,
                                          ctypes.POINTER(_Generation)], st),
        }
        for name, (args, res) in sigs.items():
            f = getattr(lib, name)
            f.argtypes = args
            f.restype = res
        _lib = lib
        return lib


def _check(status):
    if status != OK:
        msg = _load().flashstream_last_error().decode("utf-8", "replace")
        raise Error(msg or "flashstream error %d" % status, status)


def _utf8(s, what):
    if not isinstance(s, str):
        raise Error("%s must be a str, not %s" % (what, type(s).__name__))
    return s.encode("utf-8")


class Engine:
    """A model loaded under a memory budget.

    mem: the budget, an int of bytes or a size string as the CLI takes it ("512MiB"); None:
    three quarters of the memory available. threads: compute threads (0: all cores). ctx:
    KV-cache positions (0: what the budget allows, up to 4096). progress: a callable taking
    the fraction of weights loaded, returning False to cancel the load.
    """

    def __init__(self, path, mem=None, threads=0, ctx=0, progress=None):
        self._lib = _load()
        self._h = None
        params = self._lib.flashstream_engine_default_params()
        if mem is not None:
            params.mem_bytes = parse_size(mem)
        if not isinstance(threads, int) or threads < 0:
            raise Error("threads must be an int >= 0 (0: all cores)")
        if not isinstance(ctx, int) or ctx < 0:
            raise Error("ctx must be an int >= 0 (0: automatic)")
        params.n_threads = threads
        params.n_ctx = ctx
        cb = None
        if progress is not None:
            def _progress(p, _user):
                try:
                    return bool(progress(p) is not False)
                except Exception:  # an exception cancels the load
                    return False
            cb = _PROGRESS_FN(_progress)
            params.progress_callback = ctypes.cast(cb, ctypes.c_void_p)
        h = ctypes.c_void_p()
        _check(self._lib.flashstream_engine_open(_utf8(os.fspath(path), "path"), ctypes.byref(params), ctypes.byref(h)))
        self._h = h
        self.last_generation = None

    def _handle(self):
        if self._h is None:
            raise Error("the engine is closed")
        return self._h

    def close(self):
        """Frees the engine (also done by the context manager and the garbage collector)."""
        if self._h is not None:
            h, self._h = self._h, None
            _check(self._lib.flashstream_engine_free(h))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def set_budget(self, mem):
        """Moves the budget (int bytes or "256MiB") while the model stays loaded; below the
        minimum raises Error and nothing changes. Safe while another thread generates."""
        _check(self._lib.flashstream_engine_set_budget(self._handle(), parse_size(mem)))

    def set_budget_auto(self, fraction=0.75, min=None, max=None):
        """Auto mode: the budget follows `fraction` of what the engine holds plus what the OS
        says is available (Linux: the memory cgroup's room and MemAvailable; iOS:
        os_proc_available_memory), checked before each forward pass at most every 100 ms and
        clamped to [min or the model's minimum, max]. fraction=0 (or None) turns it off; a fixed
        set_budget does too. Raises Error where the OS gives no reading or for a bad fraction."""
        f = 0.0 if fraction is None else float(fraction)
        lo = 0 if min is None else parse_size(min)
        hi = 0 if max is None else parse_size(max)
        _check(self._lib.flashstream_engine_set_budget_auto(self._handle(), f, lo, hi))

    def stats(self):
        """Counters: bytes_read, load_bytes, load_seconds, stall_seconds, peak_memory_bytes,
        current_memory_bytes, budget_bytes, planned_bytes, min_budget_bytes, n_ctx,
        prompt_tokens_per_s, decode_tokens_per_s."""
        s = _Stats()
        _check(self._lib.flashstream_engine_stats(self._handle(), ctypes.byref(s)))
        return {name: getattr(s, name) for name, _ in _Stats._fields_}

    def plan(self):
        """The residency plan and its budget lines, as text."""
        n = ctypes.c_size_t()
        st = self._lib.flashstream_engine_plan(self._handle(), None, 0, ctypes.byref(n))
        if st not in (OK, 1, ERR_BUFFER_TOO_SMALL):
            _check(st)
        buf = ctypes.create_string_buffer(n.value + 1)
        _check(self._lib.flashstream_engine_plan(self._handle(), buf, len(buf), ctypes.byref(n)))
        return buf.value.decode("utf-8")

    def tokenize(self, text, add_special=True, parse_special=True):
        """Token ids of text."""
        b = _utf8(text, "text")
        n = ctypes.c_size_t()
        cap = len(b) + 8
        while True:
            arr = (ctypes.c_int32 * cap)()
            st = self._lib.flashstream_tokenize(self._handle(), b, add_special, parse_special, arr, cap, ctypes.byref(n))
            if st == ERR_BUFFER_TOO_SMALL:
                cap = n.value
                continue
            _check(st)
            return list(arr[: n.value])

    def detokenize(self, tokens):
        """The text of token ids."""
        arr = (ctypes.c_int32 * max(len(tokens), 1))(*tokens)
        n = ctypes.c_size_t()
        cap = 16 * len(tokens) + 16
        while True:
            buf = ctypes.create_string_buffer(cap)
            st = self._lib.flashstream_detokenize(self._handle(), arr, len(tokens), buf, cap, ctypes.byref(n))
            if st == ERR_BUFFER_TOO_SMALL:
                cap = n.value + 1
                continue
            _check(st)
            return buf.raw[: n.value].decode("utf-8", "replace")

    @staticmethod
    def _messages(messages):
        arr = (_ChatMessage * max(len(messages), 1))()
        keep = []
        for i, m in enumerate(messages):
            r, c = _utf8(m["role"], "role"), _utf8(m["content"], "content")
            keep += [r, c]
            arr[i].role, arr[i].content = r, c
        return arr, keep

    def apply_chat_template(self, messages, add_generation_prompt=True):
        """messages: a list of {"role": ..., "content": ...}; the rendered prompt."""
        arr, _keep = self._messages(messages)
        out = ctypes.c_void_p()
        _check(self._lib.flashstream_chat_apply_template(self._handle(), arr, len(messages), add_generation_prompt, ctypes.byref(out)))
        try:
            return ctypes.string_at(out.value).decode("utf-8")
        finally:
            self._lib.flashstream_string_free(out)

    def generate(self, prompt, max_tokens=16, temperature=0.0, chat=False, system=None,
                 stop=None, seed=None, top_k=None, top_p=None, min_p=None, stop_at_eog=True,
                 repeat_penalty=None, frequency_penalty=None, presence_penalty=None):
        """Yields text pieces as they are produced; breaking out of the loop stops generation.

        chat: the prompt is a user message (after `system`, if given) rendered with the model's
        chat template. Generation runs on a helper thread in lockstep with the loop: the next
        token is computed only once the previous piece was taken, so a break stops it at once.
        Afterwards `last_generation` holds the C API's figures (n_generated, stop_reason, ...)."""
        lib = self._lib
        h = self._handle()
        if system is not None and not chat:
            raise Error("system is only used with chat=True")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 <= max_tokens < 1 << 32:
            raise Error("max_tokens must be an int from 0 to 2**32-1, not %r" % (max_tokens,))
        p = lib.flashstream_sampling_default_params()
        p.max_tokens = max_tokens
        p.temperature = float(temperature)
        if seed is not None:
            p.seed = seed
        if top_k is not None:
            p.top_k = top_k
        if top_p is not None:
            p.top_p = top_p
        if min_p is not None:
            p.min_p = min_p
        if repeat_penalty is not None:
            p.repeat_penalty = repeat_penalty
        if frequency_penalty is not None:
            p.frequency_penalty = frequency_penalty
        if presence_penalty is not None:
            p.presence_penalty = presence_penalty
        p.stop_at_eog = stop_at_eog
        stops = [_utf8(s, "stop string") for s in (stop or [])]
        stop_arr = (ctypes.c_char_p * max(len(stops), 1))(*stops)
        p.stop = ctypes.cast(stop_arr, ctypes.POINTER(ctypes.c_char_p))
        p.n_stop = len(stops)
        if chat:
            msgs = ([{"role": "system", "content": system}] if system is not None else [])
            msgs.append({"role": "user", "content": prompt})
            msg_arr, keep = self._messages(msgs)
        else:
            prompt_b = _utf8(prompt, "prompt")

        sess = ctypes.c_void_p()
        _check(lib.flashstream_session_new(h, ctypes.byref(sess)))
        pieces = queue.Queue()
        go_on = threading.Semaphore(0)
        stopping = threading.Event()

        def on_token(piece, n, _tok, _user):
            if n == 0:
                return not stopping.is_set()
            pieces.put(("piece", ctypes.string_at(piece, n)))
            go_on.acquire()  # until the loop asks for the next piece (or stops)
            return not stopping.is_set()

        cb = _TOKEN_FN(on_token)
        gen = _Generation()

        def run():
            if chat:
                st = lib.flashstream_session_chat(sess, msg_arr, len(msgs), ctypes.byref(p), cb, None,
                                                  ctypes.byref(gen))
            else:
                st = lib.flashstream_session_generate(sess, prompt_b, ctypes.byref(p), cb, None,
                                                      ctypes.byref(gen))
            err = None if st == OK else lib.flashstream_last_error().decode("utf-8", "replace")
            pieces.put(("end", (st, err)))

        t = threading.Thread(target=run, name="flashstream-generate", daemon=True)
        t.start()
        pending = bytearray()
        try:
            while True:
                kind, v = pieces.get()
                if kind == "end":
                    st, err = v
                    if st != OK:
                        raise Error(err or "flashstream error %d" % st, st)
                    if pending:
                        yield pending.decode("utf-8", "replace")
                    return
                pending += v
                try:
                    text = pending.decode("utf-8")
                except UnicodeDecodeError:
                    go_on.release()
                    continue
                pending.clear()
                yield text
                go_on.release()
        finally:
            stopping.set()
            go_on.release()
            t.join()
            lib.flashstream_session_free(sess)
            self.last_generation = {name: getattr(gen, name) for name, _ in _Generation._fields_}

    def complete(self, prompt, max_tokens=16, temperature=0.0, **kw):
        """The whole generated text."""
        return "".join(self.generate(prompt, max_tokens=max_tokens, temperature=temperature, **kw))


def version():
    """libflashstream's version."""
    return _load().flashstream_version().decode()
