"""The A1111/Forge extension inside a real Stable Diffusion WebUI Forge (headless, CPU, offline).

Runs when ``FORGE_PATH`` / ``FORGE_PYTHON`` point at a Forge prepared by ``.ci/hosts/prepare_forge.sh`` (``.ci/run``
sources ``forge.env``). One Forge per session, everything it writes under a temporary ``--data-dir``:

* the pack is installed the way the WebUI does it: a folder in ``extensions/`` (named ``sd-webui-rewardloop``,
  not ``rewardloop``) and its ``install.py`` run by the launcher's own ``run_extension_installer``;
* a second, test-only extension (``zz-rewardloop-probe``, after ours in every hook) records what later
  per-image scripts see (the seed ADetailer-style scripts read from ``p.all_seeds``), the outer job's shared state
  around our hook, and can interrupt the job like the UI's *Interrupt* button;
* the models are the tiny ones of ``weights/tiny.py``: ``tiny-sd15-single`` as the checkpoint, tiny RAHF / BLIP /
  MiniLM as the rewards' models (chosen in the extension's model fields), and a LoRA the pack's DPG trainer
  trains on the same checkpoint.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _http import get_json, post_json

ROOT = Path(__file__).resolve().parents[1]
FORGE_PATH = os.environ.get("FORGE_PATH")
FORGE_PYTHON = os.environ.get("FORGE_PYTHON")
START_TIMEOUT = float(os.environ.get("FORGE_START_TIMEOUT", "300"))
RUN_TIMEOUT = float(os.environ.get("FORGE_RUN_TIMEOUT", "600"))
PACK_DIR = "sd-webui-rewardloop"
PROBE_DIR = "zz-rewardloop-probe"
LORA = "rl_tiny_dpg"

pytestmark = [
    pytest.mark.realhost,
    pytest.mark.slow,
    pytest.mark.skipif(not (FORGE_PATH and FORGE_PYTHON), reason="Forge not prepared: run .ci/hosts/prepare_forge.sh "
                                                                 "and source its forge.env (FORGE_PATH, FORGE_PYTHON)"),
]

SIZE, STEPS, SEED = 64, 3, 1000
PROMPT, NEGATIVE = "a photo of a red car on the street", "blurry"

# A test-only extension: records what the WebUI and later scripts see, writes one JSON per job.
PROBE = textwrap.dedent('''
    import hashlib, json, os
    import numpy as np
    import gradio as gr
    from modules import scripts, shared, processing, paths

    def _h(img):
        return hashlib.sha1(np.asarray(img.convert("RGB")).tobytes()).hexdigest()

    def _cache():
        c = processing.StableDiffusionProcessing.cached_c
        return [id(c), repr(c[0])[:300]]

    class Probe(scripts.Script):
        sorting_priority = 1000
        def title(self):
            return "RewardLoop probe"
        def show(self, is_img2img):
            return scripts.AlwaysVisible
        def ui(self, is_img2img):
            return [gr.Textbox(value=""), gr.Textbox(value="")]
        def _rec(self, p):
            if not hasattr(p, "_probe"):
                p._probe = {"batches": [], "images": [], "order": []}
            return p._probe
        def postprocess_batch(self, p, out, *args, **kw):
            if not args or not args[0]:
                return
            model = p.sd_model
            self._rec(p)["before"] = {"cache": _cache(), "job_no": shared.state.job_no,
                                      "job_count": shared.state.job_count,
                                      "forge_objects": id(getattr(model, "forge_objects", None)),
                                      "sampling_steps": shared.state.sampling_steps}
        def postprocess_batch_list(self, p, pp, *args, **kw):
            if not args or not args[0]:
                return
            rec = self._rec(p)
            model = p.sd_model
            rec["batches"].append({
                "batch": kw.get("batch_number"), "n": len(pp.images), "seeds": list(p.seeds),
                "ours_ran_first": hasattr(p, "_rewardloop_book"),
                "before": rec.pop("before", None),
                "after": {"cache": _cache(), "job_no": shared.state.job_no, "job_count": shared.state.job_count,
                          "forge_objects": id(getattr(model, "forge_objects", None)),
                          "sampling_steps": shared.state.sampling_steps}})
            if args[1] == "interrupt-after-first-batch" and kw.get("batch_number") == 0:
                shared.state.interrupt()
        def postprocess_image(self, p, pp, *args):
            if not args or not args[0]:
                return
            i = p.batch_index + p.iteration * p.batch_size   # how per-image scripts (ADetailer) index p.all_*
            self._rec(p)["images"].append({"sha1": _h(pp.image), "all_seed": p.all_seeds[i],
                                           "batch_seed": p.seeds[p.batch_index], "all_prompt": p.all_prompts[i]})
        def postprocess(self, p, processed, *args):
            if not args or not args[0]:
                return
            rec = self._rec(p)
            rec["final"] = {"all_seeds": list(p.all_seeds), "n_images": len(processed.images),
                            "processed_all_seeds": list(processed.all_seeds),
                            "overlay_images": None if p.overlay_images is None else len(p.overlay_images)}
            with open(args[0], "w") as f:
                json.dump(rec, f)
''')


# ------------------------------------------------------------------ the Forge process
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pack_files() -> list[Path]:
    """What a git clone of the extension holds (tracked + new files git does not ignore)."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=60).stdout
        return [ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", "__pycache__", ".pytest_cache", "output"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not (set(p.relative_to(ROOT).parts) & skip)]


def install_extension(dest: Path) -> None:
    for f in _pack_files():
        target = dest / f.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)


def pip_freeze() -> list[str]:
    out = subprocess.run([FORGE_PYTHON, "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return sorted(line for line in out.splitlines() if line.strip())


def run_installer_like_the_launcher(ext_dir: Path) -> str:
    """The WebUI launcher's own run_extension_installer (a subprocess with the WebUI folder on PYTHONPATH)."""
    code = f"import launch; launch.run_extension_installer({str(ext_dir)!r})"
    out = subprocess.run([FORGE_PYTHON, "-c", code], cwd=FORGE_PATH, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def start_lora_training(models_root: Path, tmp: Path) -> tuple[subprocess.Popen, Path]:
    """A LoRA from the pack's DPG trainer (dreambooth term, a few steps) on the shared tiny SD1.5 checkpoint,
    trained in the background while Forge starts; :func:`finish_lora` waits for it."""
    refs = tmp / "refs"
    refs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        a = np.zeros((SIZE, SIZE, 3), np.uint8)
        a[16:48, 16:48] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(refs / f"ref{i}.png")
    env = {**os.environ, "REWARDLOOP_MODELS": str(models_root), "REWARDLOOP_OUTPUT": str(tmp / "output"),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    cmd = [sys.executable, "-m", "rewardloop", "train-dpg", "--base", "tiny-sd15-single", "--refs", str(refs),
           "--trigger", "sks", "--class-prompt", "a photo of a toy", "--mode", "dreambooth", "--steps", "4",
           "--lr", "0.05", "--rank", "4", "--resolution", str(SIZE), "--num-class-images", "0", "--preset", "cpu",
           "--sample-every", "0", "--sample-steps", "1", "--save-every", "0", "--out", LORA, "--overwrite",
           "--device", "cpu"]
    log = tmp / "train.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    return proc, log


def finish_lora(proc: subprocess.Popen, log: Path, models_root: Path) -> Path:
    rc = proc.wait(timeout=1800)
    assert rc == 0, log.read_text(errors="replace")[-3000:]
    found = sorted(models_root.rglob(f"{LORA}.safetensors"))
    assert found, f"the trainer wrote no {LORA}.safetensors:\n{log.read_text(errors='replace')[-2000:]}"
    return found[0]


class Forge:
    def __init__(self, url, proc, log: Path, data: Path, install_out: str, freeze_before, freeze_after,
                 install_again: str, startup_log: str):
        self.url, self.proc, self.log, self.data = url, proc, log, data
        self.install_out, self.freeze_before, self.freeze_after = install_out, freeze_before, freeze_after
        self.install_again, self.startup_log = install_again, startup_log
        self.jobs = 0

    def get(self, path, timeout=60):
        return get_json(self.url + path, timeout)

    def post(self, path, body, timeout=RUN_TIMEOUT):
        return post_json(self.url + path, body, timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def generate(self, kind="txt2img", rl=None, probe="", **payload):
        """One job; returns (images, info, probe record, log lines written during the job)."""
        self.jobs += 1
        probe_file = self.data / f"probe{self.jobs}.json" if probe else None
        body = dict(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS, cfg_scale=7.0, width=SIZE,
                    height=SIZE, batch_size=2, n_iter=1, sampler_name="Euler", scheduler="Automatic",
                    send_images=True, save_images=False)
        body.update(payload)
        scripts = {}
        if rl is not None:
            scripts["RewardLoop"] = {"args": rl}
        if probe:
            scripts["RewardLoop probe"] = {"args": [str(probe_file), probe]}
        body["alwayson_scripts"] = scripts
        start = len(self.log_text())
        status, res = self.post(f"/sdapi/v1/{kind}", body)
        assert status == 200, f"{kind} HTTP {status}: {str(res)[:2000]}\n{self.log_text()[-4000:]}"
        info = json.loads(res["info"])
        images = [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB") for b in res["images"]]
        rec = json.loads(probe_file.read_text()) if probe_file is not None and probe_file.is_file() else None
        return images, info, rec, self.log_text()[start:]


def _wait_ready(url, proc, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Forge exited with {proc.returncode} while starting:\n"
                        f"{log.read_text(errors='replace')[-6000:]}")
        try:
            with urllib.request.urlopen(url + "/sdapi/v1/scripts", timeout=5):  # noqa: S310
                return
        except (urllib.error.URLError, OSError):
            time.sleep(1.0)
    pytest.fail(f"Forge did not answer within {START_TIMEOUT:.0f} s:\n{log.read_text(errors='replace')[-6000:]}")


@pytest.fixture(scope="module")
def forge(tiny, models_root, tmp_path_factory):
    for key in ("tiny-sd15-single", "tiny-rahf", "tiny-blip", "tiny-minilm"):
        tiny(key)
    tmp = tmp_path_factory.mktemp("forge")
    data = tmp / "data"
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    (data / "models" / "Lora").mkdir(parents=True)
    ckpt = data / "models" / "Stable-diffusion" / "tiny_sd15_single.safetensors"
    ckpt.symlink_to(models_root / "checkpoints" / "tiny_sd15_single.safetensors")
    trainer = start_lora_training(models_root, tmp)
    ext = data / "extensions" / PACK_DIR
    install_extension(ext)
    (data / "extensions" / PROBE_DIR / "scripts").mkdir(parents=True)
    (data / "extensions" / PROBE_DIR / "scripts" / "probe.py").write_text(PROBE)
    freeze_before = pip_freeze()
    install_out = run_installer_like_the_launcher(ext)
    freeze_after = pip_freeze()
    install_again = run_installer_like_the_launcher(ext)
    port = _free_port()
    log = tmp / "forge.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REWARDLOOP_OUTPUT")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", REWARDLOOP_NO_TQDM="1",
               REWARDLOOP_DEVICE="cpu", REWARDLOOP_MODELS=str(models_root))
    cmd = [FORGE_PYTHON, "launch.py", "--skip-prepare-environment", "--skip-install", "--skip-version-check",
           "--skip-python-version-check", "--skip-torch-cuda-test", "--always-cpu", "--no-half", "--api",
           "--nowebui", "--port", str(port), "--server-name", "127.0.0.1", "--data-dir", str(data),
           "--ckpt", str(ckpt)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=FORGE_PATH, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        startup = log.read_text(errors="replace")
        forge = Forge(url, proc, log, data, install_out, freeze_before, freeze_after, install_again, startup)
        forge.trainer = trainer
        yield forge
    finally:
        if trainer[0].poll() is None:
            trainer[0].kill()
            trainer[0].wait(timeout=60)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        print(f"\n--- Forge log tail ({log})\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))


# ------------------------------------------------------------------ extension arguments and offline scoring
TINY_MODELS = {"caption.captioner": "tiny-blip", "caption.text_encoder": "tiny-minilm",
               "rich.rich_feedback": "tiny-rahf"}


def rl_args(**values) -> list:
    from rewardloop.sdwebui import logic
    v = {**logic.ui_defaults(), **TINY_MODELS, **values}
    return [v[name] for name in logic.UI_ORDER]


def offline_order(images, rewards=("caption", "rich"), weights=None) -> list[int]:
    """Best-first order of ``images`` by the library itself (make_scorer + assemble_rank): each reward's weight
    split equally among the scores it returns (rich: four)."""
    from rewardloop.rewards.ranking import assemble_rank
    from rewardloop.rewards.scoring import make_scorer
    flat, w = [], []
    for r in rewards:
        models = {f"{r}.{k.split('.', 1)[1]}": v for k, v in TINY_MODELS.items() if k.startswith(r + ".")}
        res = make_scorer(r, models=models)(images, [PROMPT] * len(images))
        flat += res
        w += [(weights or {}).get(r, 1.0) / len(res)] * len(res)
    return list(assemble_rank(flat, w).order)


def seed_of(infotext: str) -> int:
    return int(re.search(r"Seed: (\d+)", infotext).group(1))


def sha1(img) -> str:
    return hashlib.sha1(np.asarray(img.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def baseline(forge):
    """The extension off: 2 batches of 2 (seeds 1000..1003) — the images every other job is compared with."""
    images, info, _, _ = forge.generate(n_iter=2)
    assert info["all_seeds"] == [SEED, SEED + 1, SEED + 2, SEED + 3] and len(images) == 4
    return dict(zip(info["all_seeds"], images))


# ------------------------------------------------------------------ tests
def test_startup_and_scripts(forge):
    log = forge.startup_log
    ours = [line for line in log.splitlines() if re.search(r"rewardloop", line, re.I)
            and re.search(r"error|traceback|exception|warning", line, re.I)]
    assert not ours, ours
    assert "Error loading script" not in log and "Traceback" not in log, log[-4000:]
    scripts = forge.get("/sdapi/v1/scripts")
    assert "rewardloop" in scripts["txt2img"] and "rewardloop" in scripts["img2img"]
    # the real UI (gradio 4.40 here) built our components in UI_ORDER with the light profile's defaults
    from rewardloop.sdwebui import logic
    info = [s for s in forge.get("/sdapi/v1/script-info") if s["name"] == "rewardloop" and not s["is_img2img"]][0]
    d = logic.ui_defaults()
    assert [a["value"] for a in info["args"]] == [d[name] for name in logic.UI_ORDER]
    assert d["caption.captioner"] == "blip-large" and d["caption.text_encoder"] == "all-MiniLM-L6-v2"
    assert d["sam_llm.sam"] == "sam-vit-b" and d["sam_llm.llm"] == "SmolLM2-135M-Instruct"


def test_install_like_the_webui_only_adds_packages(forge):
    before = dict(line.split("==", 1) for line in forge.freeze_before if "==" in line)
    after = dict(line.split("==", 1) for line in forge.freeze_after if "==" in line)
    changed = {k: (before[k], after[k]) for k in before if k in after and before[k] != after[k]}
    removed = sorted(set(before) - set(after))
    assert not changed and not removed, (changed, removed)
    pristine = Path(os.environ["FORGE_FREEZE"]).read_text().split() if os.environ.get("FORGE_FREEZE") else []
    for line in pristine:  # nothing Forge installed was ever changed, in this or an earlier session
        name, _, version = line.partition("==")
        assert after.get(name, version) == version, (line, after.get(name))
    assert "numpy" in after and after["numpy"] == before["numpy"]
    # opencv-python (Forge's) stands in for opencv-python-headless: one line says so, no second OpenCV
    skipped = [line for line in forge.install_out.splitlines() if "skipped" in line]
    assert len(skipped) <= 1 and not any(k.startswith("opencv-python-headless") for k in after)
    assert "opencv-python" in skipped[0]
    assert "nothing to install" in forge.install_again


def test_ranking_keeps_the_best_of_each_batch_like_the_library(forge, baseline):
    images, info, rec, _ = forge.generate(n_iter=2, rl=rl_args(enabled=True, rewards=["caption", "rich"],
                                                               keep_top_k=1), probe="record")
    expected = []
    for b in range(2):
        seeds = [SEED + 2 * b, SEED + 2 * b + 1]
        expected.append(seeds[offline_order([baseline[s] for s in seeds])[0]])
    assert info["all_seeds"] == expected and len(images) == 2
    assert [seed_of(t) for t in info["infotexts"]] == expected
    for img, s in zip(images, expected):
        assert sha1(img) == sha1(baseline[s])  # the very image generated with that seed
    for text in info["infotexts"]:
        assert "RewardLoop rank: caption+rich" in text and "RewardLoop top k: 1" in text
        assert "RewardLoop place: 1/2" in text and "RewardLoop models:" in text and "tiny-rahf" in text
        assert "RewardLoop error" not in text
    # what a later per-image script (ADetailer-style p.all_seeds[i]) saw for each kept image
    assert rec["batches"][0]["ours_ran_first"]
    seen = {r["sha1"]: r for r in rec["images"]}
    for img, s in zip(images, expected):
        assert seen[sha1(img)]["all_seed"] == s and seen[sha1(img)]["batch_seed"] == s
    assert rec["final"]["all_seeds"] == expected == rec["final"]["processed_all_seeds"]


def test_all_ranked_best_first_with_the_offline_order(forge, baseline):
    images, info, _, _ = forge.generate(n_iter=1, batch_size=2, rl=rl_args(enabled=True, rewards=["rich"]))
    order = offline_order([baseline[SEED], baseline[SEED + 1]], rewards=("rich",))
    assert info["all_seeds"] == [SEED + i for i in order]
    assert [sha1(i) for i in images] == [sha1(baseline[SEED + i]) for i in order]
    assert [re.search(r"RewardLoop place: (\d)/2", t).group(1) for t in info["infotexts"]] == ["1", "2"]


def test_interrupted_job_lists_match_the_images(forge, baseline):
    images, info, rec, _ = forge.generate(n_iter=2, rl=rl_args(enabled=True, rewards=["rich"], keep_top_k=1),
                                          probe="interrupt-after-first-batch")
    assert len(images) == 1
    best = [SEED, SEED + 1][offline_order([baseline[SEED], baseline[SEED + 1]], rewards=("rich",))[0]]
    assert info["all_seeds"] == [best] and len(info["all_prompts"]) == 1 and len(info["all_subseeds"]) == 1
    assert seed_of(info["infotexts"][0]) == best and sha1(images[0]) == sha1(baseline[best])
    assert rec["final"]["all_seeds"] == [best] and rec["final"]["n_images"] == 1


def _threshold(heat: np.ndarray, q: float = 0.7) -> float:
    """A threshold in the widest gap between heat values near quantile ``q`` (no pixel sits on it)."""
    v = np.unique(heat.ravel())
    i = int(np.clip(round(q * (len(v) - 1)), 1, len(v) - 2))
    j = i - 2 + int(np.argmax(np.diff(v[i - 2:i + 3])))
    return float((v[j] + v[j + 1]) / 2)


def test_autofix_repaints_only_flagged_regions_and_leaves_the_outer_job_alone(forge, baseline):
    from rewardloop.rewards.scoring import make_scorer
    from rewardloop.sdwebui import logic
    originals = [baseline[SEED], baseline[SEED + 1]]
    res = make_scorer("rich", models={"rich_feedback": "tiny-rahf"})(originals, [PROMPT] * 2)
    heats = [np.asarray(d["implausibility_heatmap"], dtype=np.float32) for d in res[0].details]
    thr = _threshold(heats[0])
    masks = [logic.heatmap_mask(h, (SIZE, SIZE), thr, 0.0) > 0 for h in heats]
    assert any(m.any() and not m.all() for m in masks), "the tiny model flags nothing: pick another quantile"
    params_before = (forge.data / "params.txt").read_text() if (forge.data / "params.txt").is_file() else None
    images, info, rec, log = forge.generate(
        rl=rl_args(autofix=True, fix_reward="rich", threshold=thr, dilation=0.0, denoise=0.75, fix_candidates=3),
        probe="record")
    assert info["all_seeds"] == [SEED, SEED + 1] and len(images) == 2
    fixed_any = False
    for img, orig, m, text in zip(images, originals, masks, info["infotexts"]):
        a, o = np.asarray(img).astype(int), np.asarray(orig).astype(int)
        assert (a[~m] == o[~m]).all(), "auto-fix changed pixels outside the flagged region"
        result = re.search(r"RewardLoop fix result: ([^,\n]+)", text)
        assert result, text
        if not m.any():
            assert "nothing flagged" in result.group(1) and (a == o).all()
        elif result.group(1).startswith("fixed"):
            fixed_any = True
            before, after = map(float, re.search(r"([\d.]+) -> ([\d.]+)", text).groups())
            assert after > before and (a[m] != o[m]).any()
        else:
            assert result.group(1).startswith("kept original") and (a == o).all()
        assert "RewardLoop fix: rich" in text and "candidates 3" in text and "Denoising strength" not in text
    assert fixed_any, "no fix scored higher than its original: try more candidates"
    # the outer job as it was: condition cache, progress counters, Forge's model objects, params.txt
    b = rec["batches"][0]
    assert b["before"]["cache"] == b["after"]["cache"]
    assert (b["before"]["job_no"], b["before"]["job_count"]) == (b["after"]["job_no"], b["after"]["job_count"])
    assert b["before"]["forge_objects"] == b["after"]["forge_objects"]
    params = (forge.data / "params.txt").read_text()
    assert params != params_before and "Mask blur" not in params and "Denoising strength" not in params
    assert f"Seed: {SEED}" in params and "Steps: 3" in params
    assert "Traceback" not in log and "*** " not in log, log[-3000:]


def _b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_img2img_ranking_moves_each_overlay_with_its_image(forge, baseline):
    inits = [baseline[SEED + i] for i in range(4)]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255  # repaint the left half; the right half is pasted back from each slot's init image
    images, info, _, _ = forge.generate(
        "img2img", init_images=[_b64(i) for i in inits], mask=_b64(Image.fromarray(mask)), batch_size=4,
        denoising_strength=0.9, inpainting_fill=1, mask_blur=0, inpaint_full_res=False,
        rl=rl_args(enabled=True, rewards=["rich"]))
    slots = [s - SEED for s in info["all_seeds"]]
    assert sorted(slots) == [0, 1, 2, 3] and slots != [0, 1, 2, 3], f"ranking kept the slot order {slots}"
    keep = np.s_[:, SIZE // 2 + 4:]  # away from the mask edge
    for img, slot in zip(images, slots):
        assert (np.asarray(img)[keep] == np.asarray(inits[slot])[keep]).all(), \
            f"the image of slot {slot} got another slot's overlay"


def test_errors_show_in_the_console_and_the_generation_info(forge, baseline):
    images, info, _, log = forge.generate(n_iter=2, rl=rl_args(enabled=True, rewards=["rich"], keep_top_k=1,
                                                               **{"rich.rich_feedback": "no-such-rahf"}))
    assert [sha1(i) for i in images] == [sha1(baseline[SEED + i]) for i in range(4)]  # all left as generated
    assert info["all_seeds"] == [SEED + i for i in range(4)]
    lines = [line for line in log.splitlines() if line.startswith("*** RewardLoop")]  # once for the job
    assert len(lines) == 1 and "no-such-rahf" in lines[0] and "not found" in lines[0], log[-3000:]
    assert "Traceback" not in log
    for text in info["infotexts"]:
        assert "RewardLoop error:" in text and "no-such-rahf" in text
    bad, _, _, log2 = forge.generate(rl=rl_args(enabled=True, rewards=["rich"], mode="best"))
    assert any("ranking mode 'best'" in line for line in log2.splitlines() if line.startswith("*** RewardLoop"))
    assert [sha1(i) for i in bad] == [sha1(baseline[SEED]), sha1(baseline[SEED + 1])]


def test_trained_lora_loads_with_every_key_matched(forge, baseline, models_root):
    lora = finish_lora(*forge.trainer, models_root)
    shutil.copy2(lora, forge.data / "models" / "Lora" / f"{LORA}.safetensors")
    status, _ = forge.post("/sdapi/v1/refresh-loras", {})
    assert status == 200
    images, info, _, log = forge.generate(prompt=f"{PROMPT} <lora:{LORA}:1>")
    lora_lines = [line for line in log.splitlines() if "[LORA]" in line]
    assert lora_lines, log[-3000:]
    assert not [line for line in lora_lines if "unmatched" in line or "mismatch" in line.lower()], lora_lines
    loaded = [line for line in lora_lines if line.startswith(f"[LORA] Loaded") and LORA in line]
    assert any("-UNet with" in line for line in loaded) and all("skipped 0 keys" in line for line in loaded), loaded
    assert info["all_seeds"] == [SEED, SEED + 1]
    assert any(sha1(a) != sha1(baseline[s]) for a, s in zip(images, info["all_seeds"]))
    diff = np.abs(np.asarray(images[0]).astype(int) - np.asarray(baseline[SEED]).astype(int)).mean()
    assert diff > 0.5, f"the LoRA barely changed the image (mean abs diff {diff:.3f})"


def test_library_tests_at_forge_pins(forge, tmp_path):
    """The low end of requirements.txt: the library's own tests with Forge's Python (transformers 4.46.1,
    diffusers 0.31, numpy 1.26, …) plus what install.py added there; pytest comes from outside the WebUI venv."""
    link = tmp_path / "pkgs"
    link.mkdir()
    (link / "rewardloop").symlink_to(ROOT, target_is_directory=True)
    tools = os.environ.get("FORGE_TESTTOOLS", "")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REWARDLOOP_MODELS", "CI")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (tools, str(link)) if p), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", REWARDLOOP_NO_TQDM="1")
    cmd = [FORGE_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not realhost",
           "--basetemp", str(tmp_path / "t")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    tail = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    versions = subprocess.run([FORGE_PYTHON, "-c", "import transformers, diffusers, numpy; print(transformers."
                               "__version__, diffusers.__version__, numpy.__version__)"], capture_output=True,
                              text=True, timeout=120).stdout.split()
    assert versions == ["4.46.1", "0.31.0", "1.26.2"], versions  # the lower bounds of requirements.txt
    print("\n--- library tests at Forge's pins:", tail.strip().splitlines()[-1])
