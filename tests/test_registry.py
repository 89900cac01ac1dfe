"""Registry: resolution order, one-line errors in under a second, hash checks, downloads only on request."""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest

from rewardloop import bridge
from rewardloop.weights import registry
from rewardloop.weights.catalogue import CATALOGUE, get_spec, specs_for_profile


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No models anywhere but where a test puts them."""
    monkeypatch.setenv("REWARDLOOP_MODELS", str(tmp_path / "root"))
    monkeypatch.setenv("REWARDLOOP_PACK_MODELS", str(tmp_path / "pack"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfcache"))
    monkeypatch.setattr(registry, "_wheel_path", lambda spec: None)
    return tmp_path


def _place(base: Path, spec, content=b"x"):
    p = base / spec.folder / spec.name
    if spec.is_file:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    else:
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text("{}")
    return p


def _fake_folder_paths(monkeypatch, comfy_models: Path):
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(comfy_models)
    fp.folder_names_and_paths = {}
    fp.get_folder_paths = lambda name: fp.folder_names_and_paths.get(name, ([], set()))[0]
    fp.get_output_directory = lambda: str(comfy_models.parent / "output")
    fp.get_temp_directory = lambda: str(comfy_models.parent / "temp")
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    cm = types.ModuleType("comfy.model_management")
    monkeypatch.setitem(sys.modules, "comfy", types.ModuleType("comfy"))
    monkeypatch.setitem(sys.modules, "comfy.model_management", cm)
    return fp


def test_resolution_order(isolated, monkeypatch):
    spec = get_spec("sam-vit-b")
    with pytest.raises(registry.ModelNotFoundError):
        registry.resolve(spec.key)
    pack = _place(isolated / "pack", spec)
    assert registry.resolve(spec.key).where == "pack"
    root = _place(isolated / "root", spec)
    r = registry.resolve(spec.key)
    assert (r.where, r.path) == ("models-root", root)
    fp = _fake_folder_paths(monkeypatch, isolated / "comfy" / "models")
    bridge.register_model_folders()
    assert "sams" in fp.folder_names_and_paths and "rich_feedback" in fp.folder_names_and_paths
    comfy = _place(isolated / "comfy" / "models", spec)
    r = registry.resolve(spec.key)
    assert (r.where, r.path) == ("comfyui", comfy)
    # an explicit path wins over everything
    explicit = isolated / "elsewhere" / "my_sam.pth"
    explicit.parent.mkdir()
    explicit.write_bytes(b"y")
    assert registry.resolve(str(explicit)).where == "explicit"
    assert pack.exists()


def test_name_inside_folder_and_hf_cache_and_wheel(isolated, monkeypatch):
    spec = get_spec("blip-large")
    _place(isolated / "root", spec)
    assert registry.resolve(spec.name, folder="blip").where == "folder"
    # HF cache: a cached snapshot is found without network
    spec2 = get_spec("dino-vits16")
    monkeypatch.setattr(registry, "_hf_cache_path", lambda s: isolated / "root" / "x" if s.key == spec2.key else None)
    (isolated / "root" / "x").mkdir(parents=True)
    (isolated / "root" / "x" / "config.json").write_text("{}")
    assert registry.resolve(spec2.key).where == "hf-cache"
    # wheel comes last
    spec3 = get_spec("all-MiniLM-L6-v2")
    monkeypatch.setattr(registry, "_wheel_path", lambda s: isolated if s.key == spec3.key else None)
    assert registry.resolve(spec3.key).where == "wheel"


def test_missing_model_error_is_one_actionable_line_and_fast(isolated):
    t0 = time.perf_counter()
    with pytest.raises(registry.ModelNotFoundError) as e:
        registry.resolve("blip2-opt-2.7b")
    elapsed = time.perf_counter() - t0
    msg = str(e.value)
    assert "\n" not in msg
    assert "blip2-opt-2.7b" in msg and str(isolated / "root" / "blip" / "blip2-opt-2.7b") in msg
    assert "python -m rewardloop download blip2-opt-2.7b" in msg
    assert elapsed < 1.0, elapsed
    with pytest.raises(registry.ModelNotFoundError, match="Put it into models/sams"):
        registry.resolve("nope.pth", folder="sams")


def test_download_refuses_hash_mismatch(isolated, monkeypatch):
    import huggingface_hub
    spec = get_spec("all-MiniLM-L6-v2")

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, local_dir=None, **kw):
        d = Path(local_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.safetensors").write_bytes(b"tampered")
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(registry.HashMismatchError, match="expected 53aa51172d14"):
        registry.download(spec.key, isolated / "dl")
    target = isolated / "dl" / "clip" / spec.name
    assert not (target / "model.safetensors").exists(), "a bad file must not stay where loaders find it"
    assert (target / "model.safetensors.corrupt").exists()


def test_download_good_hash_and_file_layout(isolated, monkeypatch):
    import huggingface_hub
    spec = get_spec("sam-vit-b")
    payload = b"sam weights"

    def fake_file(repo_id, filename, revision=None, local_dir=None, **kw):
        p = Path(local_dir) / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload)
        return str(p)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    path = registry.download(spec.key, isolated / "dl")
    assert path == isolated / "dl" / "sams" / spec.name and path.read_bytes() == payload
    assert not any(p.name.startswith(".") for p in path.parent.iterdir()), "staging folder left behind"


def test_offline_download_error_is_one_line(isolated):
    with pytest.raises(registry.DownloadError) as e:
        registry.download("dino-vits16", isolated / "dl")
    assert "\n" not in str(e.value) and "dino-vits16" in str(e.value)
    with pytest.raises(registry.DownloadError, match="by hand"):
        registry.download("rahf-richhf-multihead", isolated / "dl")


def test_catalogue_is_complete():
    keys = {s.key for s in CATALOGUE}
    for k in ("blip2-opt-2.7b", "blip-large", "clip-vit-large-patch14", "all-MiniLM-L6-v2", "sam-vit-b",
              "sam-vit-l", "sam-vit-h", "vicuna-7b-v1.5", "SmolLM2-135M-Instruct", "dino-vits16", "sd15",
              "sdxl-base", "rahf-richhf-multihead"):
        assert k in keys
    for s in CATALOGUE:
        assert s.license and s.folder and s.name
        if s.source == "hub":
            assert s.repo_id and s.files and s.size_mb > 0
    assert {s.key for s in specs_for_profile("light")} >= {"blip-large", "all-MiniLM-L6-v2", "sam-vit-b"}
