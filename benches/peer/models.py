"""The models of the benchmark: their specs, generating the random ones, and the prompts. A mixin of `peer.Bench`."""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from harness import BASE_PROMPT, GiB, HarnessError, MiB, RUNNER, fmt_size, log


class Models:
    """The models of the benchmark: their specs, generating the random ones, and the prompts."""

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
