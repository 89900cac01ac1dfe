"""A real ComfyUI (headless, CPU, loopback only) with this pack installed the way users install it.

Used by ``tests/test_comfyui_real.py`` and ``tests/test_comfyui_frontend.py`` through the session fixture ``comfy``
(tests/conftest.py). Needs ``COMFYUI_PATH`` (a ComfyUI checkout) and ``COMFYUI_PYTHON`` (its Python), which
``.ci/hosts/prepare_comfyui.sh`` writes to ``$CACHE/comfyui.env``.

* the pack is copied into a temporary ``custom_nodes/ComfyUI-RewardLoop`` (hyphenated, like a git clone) and its
  ``install.py`` is run with ComfyUI's Python, as ComfyUI-Manager does; ``rewardloop`` is NOT put on that Python's
  path (no PYTHONPATH, no editable install): the pack must work as ComfyUI imports it;
* ``main.py --cpu`` runs on a free 127.0.0.1 port with every directory (base, output, input, temp, user, database)
  in a temporary folder: nothing is written into the ComfyUI checkout; models come from a temporary models folder;
* the server is always stopped (SIGTERM, then SIGKILL), with bounded waits everywhere.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import uuid
from pathlib import Path

import pytest

from _http import get_json, post_json

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = float(os.environ.get("COMFYUI_START_TIMEOUT", "240"))
RUN_TIMEOUT = float(os.environ.get("COMFYUI_RUN_TIMEOUT", "300"))
INSTALL_TIMEOUT = float(os.environ.get("COMFYUI_INSTALL_TIMEOUT", "1500"))
PACK_FOLDER = "ComfyUI-RewardLoop"
MODEL_FOLDERS = ["checkpoints", "loras", "vae", "blip", "clip", "sams", "LLM", "rich_feedback", "dino",
                 "diffusers"]
LORA_MISS = "lora key not loaded"
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "output", "models",
                                     "*.egg-info")


def comfy_path() -> Path | None:
    p = os.environ.get("COMFYUI_PATH")
    return Path(p) if p else None


def host_env(**extra) -> dict:
    """The environment of a process of the host: offline, and without this checkout on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_PATH", "VIRTUAL_ENV")}
    env.update(PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               **extra)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pip_freeze(py: str) -> dict[str, str]:
    out = subprocess.run([py, "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True, text=True,
                         timeout=120, env=host_env()).stdout
    pairs = [ln.split("==", 1) for ln in out.splitlines() if "==" in ln]
    return {a.lower().replace("_", "-"): b for a, b in pairs}


class Comfy:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, tmp: Path, python: str):
        self.url, self.proc, self.log, self.tmp, self.python = url, proc, log, tmp, python
        self.output_dir, self.input_dir = tmp / "output", tmp / "input"
        self.models_root = tmp / "models"
        self.install_log = ""
        self.freeze_before: dict[str, str] = {}
        self.freeze_after: dict[str, str] = {}

    # ------------------------------------------------------------ HTTP
    def get(self, path: str, timeout: float = 30):
        return get_json(self.url + path, timeout)

    def post(self, path: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
        return post_json(self.url + path, body, timeout)

    # ------------------------------------------------------------ log
    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:]) or "(no log)"

    def log_mark(self) -> int:
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]

    # ------------------------------------------------------------ prompts
    def wait(self, pid: str, timeout: float = RUN_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                if hist[pid]["status"].get("status_str") in ("success", "error"):
                    return hist[pid]
            assert self.proc.poll() is None, "ComfyUI exited while running the workflow:\n" + self.log_tail()
            time.sleep(0.5)
        self.post("/interrupt", {})
        raise AssertionError(f"prompt {pid} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = RUN_TIMEOUT) -> dict:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        assert status == 200, f"/prompt refused the workflow ({status}): {json.dumps(body)[:3000]}"
        assert not body.get("node_errors"), body["node_errors"]
        return self.wait(body["prompt_id"], timeout)

    def run_ok(self, prompt: dict, timeout: float = RUN_TIMEOUT) -> dict:
        hist = self.run(prompt, timeout)
        st = hist["status"]
        assert st["status_str"] == "success", json.dumps(st.get("messages"), indent=1)[:4000] + "\n" + self.log_tail()
        return hist

    def output_files(self, hist: dict, node_id: str) -> list[Path]:
        out = []
        for img in hist["outputs"].get(node_id, {}).get("images", []):
            base = self.output_dir if img.get("type") == "output" else self.tmp / "temp"
            out.append(base / img.get("subfolder", "") / img["filename"])
        return out

    # ------------------------------------------------------------ models
    def build_models(self, entry: dict) -> dict[str, str]:
        """Build the tiny models a tiny-plan entry needs; returns alias -> name as ComfyUI sees it."""
        from rewardloop.weights import tiny
        from rewardloop.weights.catalogue import get_spec
        files = {}
        for alias, candidates in entry.get("models", {}).items():
            for key in candidates:
                if key in tiny.BUILDERS:
                    tiny.build(key, self.models_root)
                    files[alias] = get_spec(key).name
                    break
            else:
                raise AssertionError(f"no tiny builder for model alias {alias!r} (tried {candidates})")
        return files

    def write_inputs(self, entry: dict) -> None:
        import numpy as np
        from PIL import Image
        for fname, (w, h) in entry.get("inputs", {}).items():
            rng = np.random.default_rng(len(fname) + w * h)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(self.input_dir / fname)


def install_pack(custom: Path, py: str) -> tuple[Path, str]:
    """ComfyUI-Manager's way: the pack's folder in custom_nodes, then its install.py with ComfyUI's Python."""
    dest = custom / PACK_FOLDER
    shutil.copytree(ROOT, dest, ignore=COPY_IGNORE, symlinks=True)
    r = subprocess.run([py, str(dest / "install.py")], cwd=dest, env=host_env(), capture_output=True, text=True,
                       timeout=INSTALL_TIMEOUT)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        pytest.fail(f"the pack's install.py failed with ComfyUI's Python ({r.returncode}):\n{log[-4000:]}")
    return dest, log


def start(tmp: Path):
    """Generator: install the pack, start ComfyUI, yield a :class:`Comfy`, stop it."""
    comfy_dir = comfy_path()
    if comfy_dir is None:
        pytest.skip("COMFYUI_PATH is not set: run `bash .ci/run` (it prepares ComfyUI v0.3.64 in a cache) or set "
                    "COMFYUI_PATH and COMFYUI_PYTHON (README: Testing in the real hosts)")
    if not (comfy_dir / "main.py").is_file():
        pytest.skip(f"COMFYUI_PATH={comfy_dir} has no main.py")
    py = os.environ.get("COMFYUI_PYTHON", sys.executable)
    custom = tmp / "custom_nodes"
    custom.mkdir()
    for d in ("output", "input", "temp", "user"):
        (tmp / d).mkdir()
    models = tmp / "models"
    for f in MODEL_FOLDERS:
        (models / f).mkdir(parents=True)
    freeze_before = pip_freeze(py)
    _dest, install_log = install_pack(custom, py)
    freeze_after = pip_freeze(py)
    cfg = tmp / "extra_model_paths.yaml"
    cfg.write_text("rewardloop_test:\n"
                   f"  base_path: {models}\n"
                   + "".join(f"  {f}: {f}\n" for f in MODEL_FOLDERS))
    port = _free_port()
    log = tmp / "comfyui.log"
    # --base-directory: ComfyUI's own models/ and custom_nodes/ (where the pack is) are the temporary ones
    cmd = [py, str(comfy_dir / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(tmp), "--extra-model-paths-config", str(cfg),
           "--output-directory", str(tmp / "output"), "--input-directory", str(tmp / "input"),
           "--temp-directory", str(tmp / "temp"), "--user-directory", str(tmp / "user"),
           "--database-url", f"sqlite:///{tmp / 'comfyui.db'}", "--disable-auto-launch", "--preview-method", "none",
           # an LRU output cache: a workflow queued from the frontend and posted as its API file (the same prompt,
           # as the frontend test asserts) runs once
           "--cache-lru", "100"]
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=lf, stderr=subprocess.STDOUT, env=host_env(),
                                start_new_session=True)
    server = Comfy(f"http://127.0.0.1:{port}", proc, log, tmp, py)
    server.install_log, server.freeze_before, server.freeze_after = install_log, freeze_before, freeze_after
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} while starting:\n{server.log_tail()}")
            try:
                server.get("/system_stats", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT:.0f} s:\n{server.log_tail()}")
            time.sleep(1.0)
        yield server
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
        keep = os.environ.get("COMFYUI_LOG_COPY")  # e.g. to keep the log after pytest cleans its tmp dirs
        if keep:
            shutil.copyfile(log, keep)
        print(f"\nComfyUI log: {log}" + (f" (copied to {keep})" if keep else ""))
