"""Integration test in a real ComfyUI (headless, CPU, loopback only). Runs when COMFYUI_PATH is set.

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfy-venv/bin/python \
        python -m pytest -q tests/test_comfyui_real.py

* starts ``main.py --cpu`` on a free 127.0.0.1 port with every directory (output, input, temp, user,
  database) in a temporary folder; nothing is written into the ComfyUI checkout;
* links this pack into a temporary ``custom_nodes/ComfyUI-RewardLoop`` (hyphenated, like a git clone) given to
  ComfyUI through ``--extra-model-paths-config`` (its ``custom_nodes:`` key), together with a temporary models
  folder holding the tiny models each runnable workflow needs (``workflows/tiny_models.json``);
* checks ``/object_info`` lists every node of NODE_CLASS_MAPPINGS with the inputs INPUT_TYPES declares, and
  that ``tests/data/core_nodes.json`` still matches this ComfyUI;
* posts each runnable ``workflows/*.api.json`` to ``/prompt``, polls ``/history``, asserts success and outputs;
* always stops ComfyUI (finalizer), with bounded waits everywhere.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
START_TIMEOUT = float(os.environ.get("COMFYUI_START_TIMEOUT", "240"))
RUN_TIMEOUT = float(os.environ.get("COMFYUI_RUN_TIMEOUT", "300"))
PACK_FOLDER = "ComfyUI-RewardLoop"
MODEL_FOLDERS = ["checkpoints", "loras", "vae", "blip", "clip", "sams", "LLM", "rich_feedback", "dino",
                 "diffusers"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not COMFYUI_PATH, reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to "
                                                "its Python) to run the real-ComfyUI integration test"),
]


def _api_workflows() -> list[Path]:
    return sorted((ROOT / "workflows").glob("*.api.json"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, output_dir: Path):
        self.url, self.proc, self.log, self.output_dir = url, proc, log, output_dir

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:  # noqa: S310 (loopback only)
            return json.loads(r.read().decode())

    def post(self, path: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
                return r.status, json.loads(r.read().decode() or "{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode() or "{}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def run(self, prompt: dict, timeout: float = RUN_TIMEOUT) -> dict:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        assert status == 200, f"/prompt refused the workflow ({status}): {json.dumps(body)[:3000]}"
        assert not body.get("node_errors"), body["node_errors"]
        pid = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                st = hist[pid]["status"]
                if st.get("status_str") in ("success", "error"):
                    return hist[pid]
            assert self.proc.poll() is None, "ComfyUI exited while running the workflow:\n" + self.log_tail()
            time.sleep(1.0)
        self.post("/interrupt", {})
        raise AssertionError(f"workflow did not finish within {timeout:.0f} s:\n{self.log_tail()}")


def _build_models(entry: dict, models_root: Path, py: str) -> dict[str, str]:
    """Build the tiny models a workflow entry needs; returns alias -> name as ComfyUI sees it."""
    from rewardloop.weights import tiny
    from rewardloop.weights.catalogue import get_spec
    files = {}
    for alias, candidates in entry.get("models", {}).items():
        for key in candidates:
            if key == "comfy-tiny-sd15":
                out = models_root / "checkpoints" / "comfy-tiny-sd15.safetensors"
                if not out.is_file():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    subprocess.run([py, str(ROOT / "tests" / "comfyui_tiny_sd15.py"), COMFYUI_PATH, str(out)],
                                   check=True, timeout=300, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
                files[alias] = out.name
                break
            if key in getattr(tiny, "BUILDERS", {}):
                tiny.build(key, models_root)
                files[alias] = get_spec(key).name
                break
        else:
            pytest.skip(f"no builder available for model alias {alias!r} (tried {candidates})")
    return files


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    comfy_dir = Path(COMFYUI_PATH)
    if not (comfy_dir / "main.py").is_file():
        pytest.skip(f"COMFYUI_PATH={COMFYUI_PATH} has no main.py")
    py = os.environ.get("COMFYUI_PYTHON", sys.executable)
    tmp = tmp_path_factory.mktemp("comfyui")
    custom = tmp / "custom_nodes"
    custom.mkdir()
    (custom / PACK_FOLDER).symlink_to(ROOT, target_is_directory=True)
    models = tmp / "models"
    for f in MODEL_FOLDERS:
        (models / f).mkdir(parents=True)
    dirs = {n: tmp / n for n in ("output", "input", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    cfg = tmp / "extra_model_paths.yaml"
    cfg.write_text("rewardloop_test:\n"
                   f"  base_path: {models}\n"
                   + "".join(f"  {f}: {f}\n" for f in MODEL_FOLDERS)
                   + f"  custom_nodes: {custom}\n")
    port = _free_port()
    log = tmp / "comfyui.log"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "REWARDLOOP_MODELS": str(models), "PYTHONUNBUFFERED": "1"}
    env.pop("COMFYUI_PATH", None)
    # --base-directory: ComfyUI's own models/ (where trained LoRAs are written) is the temporary one, not the checkout's
    cmd = [py, str(comfy_dir / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(tmp), "--extra-model-paths-config", str(cfg), "--disable-all-custom-nodes",
           "--whitelist-custom-nodes", PACK_FOLDER,
           "--output-directory", str(dirs["output"]), "--input-directory", str(dirs["input"]),
           "--temp-directory", str(dirs["temp"]), "--user-directory", str(dirs["user"]),
           "--database-url", "sqlite:///:memory:", "--disable-auto-launch", "--preview-method", "none"]
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    server = Comfy(f"http://127.0.0.1:{port}", proc, log, dirs["output"])
    server.models_root, server.python, server.input_dir = models, py, dirs["input"]
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
            import shutil
            shutil.copyfile(log, keep)
        print(f"\nComfyUI log: {log}" + (f" (copied to {keep})" if keep else ""))


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.get("/object_info", timeout=120)


def test_pack_loaded_without_import_errors(comfy, object_info):
    lines = comfy.log.read_text(errors="replace").splitlines()
    bad = [ln for ln in lines if PACK_FOLDER in ln and ("IMPORT FAILED" in ln or "Cannot import" in ln)]
    bad += [ln for ln in lines if "RewardLoop: nodes." in ln and "not loaded" in ln]  # nodes/__init__ isolation
    assert not bad, "\n".join(bad) + "\n" + comfy.log_tail()
    assert any(PACK_FOLDER in ln for ln in lines), "the pack was not even attempted:\n" + comfy.log_tail()


def test_object_info_lists_every_node_with_its_inputs(object_info):
    from rewardloop.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from rewardloop.workflows.graph import input_entries, spec_from_class
    assert NODE_CLASS_MAPPINGS
    for key, cls in NODE_CLASS_MAPPINGS.items():
        assert key in object_info, f"{key} missing from /object_info"
        live = object_info[key]
        ours = spec_from_class(cls)
        assert live["category"].startswith("RewardLoop"), live["category"]
        if key in NODE_DISPLAY_NAME_MAPPINGS:
            assert live["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[key]
        assert list(live["output"]) == list(ours["output"]), key
        assert list(live["output_name"]) == list(ours["output_name"]), key
        assert bool(live["output_node"]) == ours["output_node"], key
        want = [(n, t, req) for n, t, _o, _c, req in input_entries(ours)]
        got = [(n, t, req) for n, t, _o, _c, req in input_entries(live)]
        assert got == want, f"{key}: /object_info inputs {got} != INPUT_TYPES {want}"


def test_core_nodes_json_matches_this_comfyui(object_info):
    from rewardloop.workflows.core_nodes import trim
    from rewardloop.workflows.graph import input_entries, load_core_specs
    saved = load_core_specs()
    live = trim(object_info, keep=list(saved))
    for name, spec in saved.items():
        assert name in live, f"core node {name} no longer exists in this ComfyUI"
        want = [(n, t, req, bool(o.get("files")) or c) for n, t, o, c, req in input_entries(spec)]
        got = [(n, t, req, bool(o.get("files")) or c) for n, t, o, c, req in input_entries(live[name])]
        assert got == want, f"core node {name} changed: regenerate tests/data/core_nodes.json"
        assert live[name]["output"] == spec["output"], name


def test_server_refuses_an_unknown_node(comfy):
    status, body = comfy.post("/prompt", {"prompt": {"1": {"class_type": "RewardLoopNoSuchNode", "inputs": {}}}})
    assert status == 400 and "error" in body, body


@pytest.mark.parametrize("path", _api_workflows(), ids=lambda p: p.name)
def test_workflow_runs_on_tiny_models(comfy, object_info, path):
    from rewardloop.workflows import tiny_run
    from rewardloop.workflows.graph import validate_api
    name = path.name[:-len(".api.json")]
    plan = tiny_run.load_plan()
    ok, reason = tiny_run.entry_for(name, plan)
    if not ok:
        pytest.skip(reason)
    for lora in plan[name].get("requires", []):
        if not (comfy.models_root / "loras" / lora).is_file():
            pytest.skip(f"needs LoRA {lora}, written by an earlier workflow of this run (run the whole file)")
    files = _build_models(plan[name], comfy.models_root, comfy.python)
    for fname, (w, h) in plan[name].get("inputs", {}).items():
        import numpy as np
        from PIL import Image
        rng = np.random.default_rng(len(fname) + w * h)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(comfy.input_dir / fname)
    prompt = tiny_run.apply(json.loads(path.read_text()), plan[name], files)
    live = {ct: comfy.get(f"/object_info/{ct}")[ct] for ct in {n["class_type"] for n in prompt.values()}}
    errs = validate_api(prompt, live)  # live specs, fetched after building: the tiny model names must be offered
    assert not errs, errs
    t0 = time.monotonic()
    hist = comfy.run(prompt)
    status = hist["status"]
    assert status["status_str"] == "success", json.dumps(status.get("messages"), indent=1)[:4000] + \
        "\n" + comfy.log_tail()
    outs = hist["outputs"]
    sinks = [nid for nid, n in prompt.items() if object_info[n["class_type"]].get("output_node")]
    for nid in sinks:
        assert nid in outs and outs[nid], f"output node {nid} ({prompt[nid]['class_type']}) produced no ui output"
        for img in outs[nid].get("images", []):
            if img.get("type") == "output":
                f = comfy.output_dir / img.get("subfolder", "") / img["filename"]
                assert f.is_file() and f.stat().st_size > 0, f
    for nid, needle in plan[name].get("expect_text", {}).items():  # what a node showed, e.g. a table's summary
        shown = "\n".join(str(t) for t in outs.get(nid, {}).get("text", []))
        assert needle in shown, f"node {nid} showed {shown[-800:]!r}, expected {needle!r}"
    print(f"{path.name}: success in {time.monotonic() - t0:.1f} s, outputs from nodes {sorted(outs)}")
