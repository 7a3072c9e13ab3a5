"""The results: per-pair ratios, the summary, results.json and the markdown table. A mixin of `peer.Bench`."""

import json
import shlex
import sys
from pathlib import Path

from harness import LLAMA_VARIANTS, MiB, fmt_size, median


class Report:
    """The results: per-pair ratios, the summary, results.json and the markdown table."""

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
