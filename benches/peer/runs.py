"""Running the engines: one run in its cgroup, the device bench, and the A B A B order of runs. A mixin of `peer.Bench`."""

import datetime
import os
import shlex
import signal
import sys
import time

from harness import MiB, RUNNER, fmt_size, log
from machine import (
    describe_machine, device_read_gbps, drop_from_page_cache, llama_log_notes,
    parse_json_stdout, processes_mapping, run_process, tail,
)


class Runs:
    """Running the engines: one run in its cgroup, the device bench, and the A B A B order of runs."""

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
