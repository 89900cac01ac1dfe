"""Every UI workflow in ComfyUI's own frontend (v0.3.64's bundled frontend), in headless Chromium.

Chromium is Debian's package (``CHROMIUM_PATH``, written by ``.ci/hosts/prepare_chromium.sh``), driven by the
``playwright`` package with ``executable_path`` (``playwright install`` is never used). For each
``workflows/<use>.json``:

* every node type is registered in the frontend, ``app.loadGraphData`` keeps every widget value;
* the frontend's own ``await app.graphToPrompt()`` equals the shipped ``workflows/api/<use>.api.json``
  (numbers compared as numbers);
* a screenshot of the loaded canvas is saved (``REWARDLOOP_SCREENSHOTS``, default a temporary folder; with
  ``REWARDLOOP_UPDATE_THUMBNAILS=1`` also written as the template-browser thumbnail ``workflows/<use>.jpg``);
* with the tiny-model substitutions of ``workflows/api/tiny_models.json`` set on the widgets, the workflow is queued
  from the UI (``app.queuePrompt``) and must finish with success.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from comfyui_host import LORA_MISS, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.realhost]
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                  "--disable-sync", "--no-first-run", "--metrics-recording-only", "--mute-audio"]
LOAD_TIMEOUT_MS = 180_000
THUMB_WIDTH = 1024


def _chromium() -> str | None:
    p = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    return p if p and Path(p).exists() else None


@pytest.fixture(scope="module")
def page(comfy):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium: run `bash .ci/run` (it installs Debian's chromium) or set CHROMIUM_PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: pip install -e '.[test]'")
    # a new user would first see the template browser: mark the tutorial done, as a returning user has it; no
    # minimap, canvas menu or render info over the screenshots; text drawn down to small zooms
    comfy.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                             "Comfy.Graph.CanvasInfo": False, "Comfy.Graph.CanvasMenu": False,
                             "LiteGraph.Canvas.MinFontSizeForLOD": 1})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        pg = browser.new_page(viewport={"width": 2400, "height": 1000})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(f"{e.message}\n{e.stack}"))
        pg.goto(comfy.url, timeout=LOAD_TIMEOUT_MS)
        pg.wait_for_function("() => window.app && window.app.graph && typeof window.app.graphToPrompt === 'function'"
                             " && window.LiteGraph && Object.keys(window.LiteGraph.registered_node_types).length > 50",
                             timeout=LOAD_TIMEOUT_MS)
        pg.page_errors = errors
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.get("/object_info", timeout=120)


def _same(a, b, path="") -> list[str]:
    """Differences between two JSON values, numbers compared as numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if a is b or a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return [] if float(a) == float(b) else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in the frontend's" for k in a.keys() - b.keys()]
        out += [f"{path}.{k}: only in the shipped" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += _same(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {a!r} != {b!r}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _load(page, ui: dict) -> None:
    page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf, true, true, null,
                                       {showMissingNodesDialog: false, showMissingModelsDialog: false});
    }""", ui)


def _fit_and_shoot(page, out: Path) -> Path:
    """Screenshot the canvas with the whole loaded graph fitted into the (large) viewport."""
    s, w, h, pad, top = page.evaluate("""() => {
        const app = window.app, c = app.canvas, el = c.canvas;
        let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
        const grow = (x, y, w, h) => { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w);
                                       y1 = Math.max(y1, y + h); };
        for (const n of app.graph._nodes) grow(n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30);
        for (const g of app.graph._groups || []) grow(g.pos[0], g.pos[1], g.size[0], g.size[1]);
        const pad = 20, top = 40, W = el.clientWidth, H = el.clientHeight;
        const s = Math.min((W - 2 * pad) / (x1 - x0), (H - 2 * pad - top) / (y1 - y0), 1.0);
        c.ds.scale = s;
        c.ds.offset[0] = -x0 + pad / s;
        c.ds.offset[1] = -y0 + (pad + top) / s;
        c.setDirty(true, true);
        c.draw(true, true);
        return [s, x1 - x0, y1 - y0, pad, top];
    }""")
    page.wait_for_timeout(700)
    out.parent.mkdir(parents=True, exist_ok=True)
    box = page.locator("#graph-canvas").bounding_box()
    clip = {"x": box["x"], "y": box["y"], "width": min(box["width"], w * s + 2 * pad),
            "height": min(box["height"], h * s + 2 * pad + top)}
    page.screenshot(path=str(out), clip=clip)  # the canvas and what the frontend draws over it (text widgets)
    return out


def _thumbnail(png: Path, jpg: Path) -> None:
    from PIL import Image
    with Image.open(png) as im:
        im = im.convert("RGB")
        if im.width > THUMB_WIDTH:
            im = im.resize((THUMB_WIDTH, round(im.height * THUMB_WIDTH / im.width)), Image.LANCZOS)
        tmp = jpg.with_name(jpg.name + ".tmp")
        im.save(tmp, "JPEG", quality=85, optimize=True)
        tmp.replace(jpg)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_in_the_real_frontend(comfy, page, object_info, path, tmp_path_factory):
    from rewardloop.workflows import tiny_run
    name = path.stem
    page.page_errors.clear()
    ui = json.loads(path.read_text())
    api_path = ROOT / "workflows" / "api" / f"{name}.api.json"
    assert api_path.is_file(), f"{path.name} has no API source {api_path.name}"
    shipped = json.loads(api_path.read_text())

    missing = page.evaluate("(types) => types.filter(t => !window.LiteGraph.registered_node_types[t])",
                            sorted({n["type"] for n in ui["nodes"]}))
    assert not missing, f"node types not registered in the frontend: {missing}"

    _load(page, ui)
    saved = page.evaluate("() => window.app.graph.serialize()")
    got = {n["id"]: n for n in saved["nodes"]}
    assert set(got) == {n["id"] for n in ui["nodes"]}, "the frontend dropped or added nodes"
    for n in ui["nodes"]:
        diffs = _same(got[n["id"]].get("widgets_values") or [], n.get("widgets_values") or [],
                      f"node {n['id']} ({n['type']}) widgets_values")
        assert not diffs, "\n".join(diffs)
    assert len(saved.get("groups", [])) == len(ui.get("groups", []))

    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    display_only = []  # frontend-only widgets (e.g. PreviewAny's 'preview'): sent, but no input of the node
    for nid, node in prompt.items():
        node.pop("_meta", None)
        spec = object_info.get(node["class_type"], {}).get("input", {})
        known = set(spec.get("required", {})) | set(spec.get("optional", {}))
        for k in [k for k in node["inputs"] if k not in known]:
            display_only.append(f"{nid}.{k}")
            del node["inputs"][k]
    want = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in shipped.items()}
    diffs = _same(prompt, want, name)
    assert not diffs, "graphToPrompt differs from the shipped API file:\n" + "\n".join(diffs)

    shots = Path(os.environ.get("REWARDLOOP_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    png = _fit_and_shoot(page, shots / f"{name}.png")
    assert png.stat().st_size > 10_000, png
    if os.environ.get("REWARDLOOP_UPDATE_THUMBNAILS") == "1":
        _thumbnail(png, path.with_suffix(".jpg"))
    print(f"{name}: screenshot {png}; display-only widgets not compared: {display_only}")

    # queue it from the UI on tiny models
    plan = tiny_run.load_plan()
    ok, reason = tiny_run.entry_for(name, plan)
    assert ok, reason
    entry = plan[name]
    for lora in entry.get("requires", []):
        assert (comfy.models_root / "loras" / lora).is_file() or _train_required(comfy, lora), lora
    files = comfy.build_models(entry)
    comfy.write_inputs(entry)
    sets = {nid: {k: (files[v[1:]] if isinstance(v, str) and v.startswith("@") else v) for k, v in vals.items()}
            for nid, vals in entry.get("set", {}).items()}
    unset = page.evaluate("""([sets, replace]) => {
        const unset = [];
        for (const n of window.app.graph._nodes) {
            for (const w of n.widgets || []) {
                if (typeof w.value === 'string' && w.value in replace) w.value = replace[w.value];
            }
        }
        for (const [nid, vals] of Object.entries(sets)) {
            const n = window.app.graph.getNodeById(Number(nid));
            for (const [k, v] of Object.entries(vals)) {
                const w = n && (n.widgets || []).find(w => w.name === k);
                if (!w) { unset.push(nid + '.' + k); continue; }
                w.value = v;
            }
        }
        return unset;
    }""", [sets, entry.get("replace", {})])
    assert not unset, f"widgets of the tiny plan not found in the UI: {unset}"
    mark = comfy.log_mark()
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                              timeout=60_000) as resp:
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    body = resp.value.json()
    assert resp.value.status == 200 and "prompt_id" in body, body
    hist = comfy.wait(body["prompt_id"])
    assert hist["status"]["status_str"] == "success", \
        json.dumps(hist["status"].get("messages"), indent=1)[:4000] + "\n" + comfy.log_tail()
    missed = [ln for ln in comfy.log_since(mark).splitlines() if LORA_MISS in ln]
    assert not missed, "\n".join(missed[:20])
    assert not page.page_errors, "\n".join(page.page_errors)


def _train_required(comfy, lora: str) -> bool:
    from test_comfyui_real import _run_named
    _run_named(comfy, "dpg_personalize")
    return (comfy.models_root / "loras" / lora).is_file()
