"""Installing llama.cpp (its private venv) and finding or building flashstream. A mixin of `peer.Bench`."""

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import HarnessError, INSTALLER, LLAMA_CPP_PYTHON_VERSION, REPO, RUNNER, log, sh
from machine import tail


class Install:
    """Installing llama.cpp (its private venv) and finding or building flashstream."""

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
