"""The pack imports as ``rewardloop`` and, like ComfyUI loads it, under any folder name."""
from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_imports_as_rewardloop():
    import rewardloop
    assert rewardloop.NODE_CLASS_MAPPINGS, "no nodes registered"
    assert rewardloop.IMPORT_ERRORS == {}, rewardloop.IMPORT_ERRORS
    assert set(rewardloop.NODE_DISPLAY_NAME_MAPPINGS) <= set(rewardloop.NODE_CLASS_MAPPINGS)


def _load_like_comfyui(folder: Path):
    """What ComfyUI's load_custom_node does: module name = the folder's full path with '.' → '_x_'."""
    name = str(folder).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return name, mod


@pytest.mark.parametrize("folder_name", ["ComfyUI-RewardLoop", "rewardloop-main.v2"])
def test_loads_under_another_folder_name_without_touching_comfy_modules(tmp_path, folder_name, monkeypatch):
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    link = custom_nodes / folder_name
    link.symlink_to(ROOT, target_is_directory=True)
    # ComfyUI has its own top-level `nodes`, `utils`, ... modules: the pack must neither import nor shadow them.
    sentinels = {n: types.ModuleType(n) for n in ("nodes", "weights", "rewards", "trainers", "utils", "cli")}
    for n, m in sentinels.items():
        monkeypatch.setitem(sys.modules, n, m)
    name, mod = _load_like_comfyui(link)
    try:
        assert mod.NODE_CLASS_MAPPINGS
        assert set(mod.NODE_CLASS_MAPPINGS) == set(__import__("rewardloop").NODE_CLASS_MAPPINGS)
        for n, m in sentinels.items():
            assert sys.modules[n] is m, f"the pack replaced top-level module {n!r}"
        assert f"{name}.nodes" in sys.modules
    finally:
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]


def test_no_absolute_imports_of_the_pack():
    bad = []
    for py in ROOT.rglob("*.py"):
        rel = py.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", ".ci") or "site-packages" in py.parts:
            continue
        text = py.read_text()
        for m in re.finditer(r"^\s*(from|import)\s+(nodes|rewards|trainers|weights|cli|bridge|fileio)\b", text, re.M):
            bad.append(f"{rel}: {m.group(0).strip()}")
    assert not bad, bad


def test_pyproject_dependencies_match_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = sorted(d.replace(" ", "") for d in meta["project"]["dependencies"])
    req = sorted(line.split("#")[0].strip().replace(" ", "")
                 for line in (ROOT / "requirements.txt").read_text().splitlines()
                 if line.split("#")[0].strip())
    assert deps == req
    assert not any(re.match(r"(torch|torchvision|torchaudio)\b", d) for d in deps), "the host owns torch"
    assert not any("==" in d for d in deps), "no exact pins: ComfyUI-Manager installs line by line"
    comfy = meta["tool"]["comfy"]
    assert comfy["requires-comfyui"].startswith(">=0."), "ComfyUI versions are 0.x"


def test_source_hygiene():
    """Patterns the ComfyUI Manager and our principles forbid in pack code."""
    offenders = []
    for py in ROOT.rglob("*.py"):
        rel = py.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".ci"):
            continue
        text = py.read_text()
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{rel}: trust_remote_code=True")
        for m in re.finditer(r"torch\.load\(", text):
            args = _call_args(text, m.end())
            if "weights_only=True" not in args:
                offenders.append(f"{rel}: torch.load({args})")
        if "torch.cuda.empty_cache" in text and rel.name != "bridge.py":
            offenders.append(f"{rel}: torch.cuda.empty_cache (use bridge.soft_empty_cache)")
    assert not offenders, offenders


def _call_args(text: str, start: int) -> str:
    depth, i = 1, start
    while i < len(text) and depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]
