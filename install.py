"""One installer for ComfyUI-Manager, Automatic1111/Forge and manual installs.

* ComfyUI-Manager installs requirements.txt itself, then runs this file; A1111/Forge run only this file.
* Installs only what is missing, with ``sys.executable -m pip`` (the host's own Python).
* Never installs, upgrades or downgrades torch / torchvision / torchaudio: the host owns them.
* ``python install.py --download light`` also fetches a model profile (see README); nothing downloads otherwise.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTECTED = {"torch", "torchvision", "torchaudio", "xformers"}


def _requirement_cls():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always vendors packaging
        from pip._vendor.packaging.requirements import Requirement  # type: ignore
    return Requirement


def read_requirements(path: Path = HERE / "requirements.txt") -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def missing_requirements(lines: list[str] | None = None) -> list[str]:
    """Requirements that are absent or whose installed version does not satisfy the specifier."""
    from importlib.metadata import PackageNotFoundError, version
    Requirement = _requirement_cls()
    out = []
    for line in (read_requirements() if lines is None else lines):
        req = Requirement(line)
        if req.name.lower() in PROTECTED:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            out.append(line)
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(line)
    return out


def detect_host() -> str:
    if os.environ.get("COMFYUI_PATH") or (HERE.parent.name == "custom_nodes"):
        return "comfyui"
    try:
        import launch  # type: ignore  # noqa: F401  (A1111/Forge's launcher module)
        return "a1111"
    except Exception:
        pass
    return "manual"


def pip_install(packages: list[str], runner=subprocess.check_call) -> None:
    cmd = [sys.executable, "-m", "pip", "install", *packages]
    print("RewardLoop install:", " ".join(cmd), flush=True)
    runner(cmd)


def main(argv: list[str] | None = None, runner=subprocess.check_call) -> int:
    ap = argparse.ArgumentParser(description="Install RewardLoop's dependencies (never torch).")
    ap.add_argument("--download", metavar="PROFILE", help="also download a model profile: light, paper, "
                                                          "preference, full, train, train-xl")
    ap.add_argument("--root", help="models root for --download")
    args = ap.parse_args(argv)
    host = detect_host()
    if host == "a1111":
        try:
            from launch import args as launch_args  # type: ignore
            if getattr(launch_args, "skip_install", False):
                print("RewardLoop install: skipped (--skip-install)")
                return 0
        except Exception:
            pass
    todo = missing_requirements()
    if todo:
        pip_install(todo, runner)
    else:
        print(f"RewardLoop install ({host}): all requirements present, nothing to install.")
    if args.download:
        import_pack()
        import importlib
        cli = importlib.import_module("rewardloop.cli")
        return cli.main(["download", "--profile", args.download] + (["--root", args.root] if args.root else []))
    return 0


def import_pack():
    """Import this checkout as ``rewardloop`` whatever its folder is called (an editable install also works)."""
    import importlib.util
    if "rewardloop" in sys.modules:
        return sys.modules["rewardloop"]
    spec = importlib.util.spec_from_file_location("rewardloop", HERE / "__init__.py",
                                                  submodule_search_locations=[str(HERE)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rewardloop"] = mod
    spec.loader.exec_module(mod)
    import importlib
    return importlib.import_module("rewardloop")


if __name__ == "__main__":
    sys.exit(main())
