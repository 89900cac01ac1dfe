"""One installer for ComfyUI-Manager, Automatic1111/Forge and manual installs.

* ComfyUI-Manager installs requirements.txt itself, then runs this file; A1111/Forge run only this file (in a
  subprocess of their launcher, with the WebUI folder on ``PYTHONPATH``).
* Installs only what is missing, with the host's own Python: ``launch.run_pip`` under A1111/Forge (it honours
  ``--skip-install`` and the WebUI's index URL), ``sys.executable -m pip`` elsewhere.
* Never changes a package that is already installed: what it installs is resolved with every installed
  package (and, under a WebUI, every pin of its ``requirements_versions.txt``) as a pip constraint, so pip
  picks versions that fit the host or fails without touching it. An installed package older than RewardLoop
  asks for is kept, and one line says so. torch / torchvision / torchaudio / xformers are the host's.
* ``opencv-python`` (or a contrib build) already present satisfies ``opencv-python-headless``: two OpenCV
  wheels would overwrite each other's ``cv2``.
* ``python install.py --download light`` also fetches a model profile (see README); nothing downloads otherwise.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTECTED = {"torch", "torchvision", "torchaudio", "xformers"}
# a requirement is met by any of these distributions (they all install the same module)
ALTERNATIVES = {"opencv-python-headless": ("opencv-python-headless", "opencv-python", "opencv-contrib-python",
                                           "opencv-contrib-python-headless")}


def _requirement_cls():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always vendors packaging
        from pip._vendor.packaging.requirements import Requirement  # type: ignore
    return Requirement


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_requirements(path: Path = HERE / "requirements.txt") -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def installed_versions() -> dict[str, str]:
    """Every installed distribution: canonical name -> version (the first found on sys.path wins, like pip)."""
    from importlib.metadata import distributions
    out: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name and dist.version:
            out.setdefault(_canon(name), dist.version)
    return out


def plan(lines: list[str] | None = None, have: dict[str, str] | None = None):
    """(to install, skipped): requirements that are absent, and ``(requirement, why)`` for those met otherwise or
    installed at a version outside RewardLoop's range (kept as they are)."""
    Requirement = _requirement_cls()
    have = installed_versions() if have is None else have
    todo, skipped = [], []
    for line in (read_requirements() if lines is None else lines):
        req = Requirement(line)
        if _canon(req.name) in PROTECTED or (req.marker is not None and not req.marker.evaluate()):
            continue
        names = ALTERNATIVES.get(_canon(req.name), (req.name,))
        found = [(n, have[_canon(n)]) for n in names if _canon(n) in have]
        if not found:
            todo.append(line)
            continue
        name, version = found[0]
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            skipped.append((line, f"{name} {version} is installed and kept; RewardLoop asks {req.specifier}"))
        elif _canon(name) != _canon(req.name):
            skipped.append((line, f"{name} {version} provides the same module"))
    return todo, skipped


def missing_requirements(lines: list[str] | None = None) -> list[str]:
    """Requirements that are not installed at all (the ones :func:`main` installs)."""
    return plan(lines)[0]


def host_pins(webui_root: Path | None) -> dict[str, str]:
    """``name==version`` pins of the WebUI's requirements_versions.txt (canonical name -> line)."""
    if webui_root is None:
        return {}
    f = Path(webui_root) / os.environ.get("REQS_FILE", "requirements_versions.txt")
    if not f.is_file():
        return {}
    out = {}
    for raw in f.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            out[_canon(line.split("==", 1)[0].strip())] = line.replace(" ", "")
    return out


def constraints(have: dict[str, str], pins: dict[str, str] | None = None) -> list[str]:
    """pip constraint lines that hold every installed package at its version (and the host's pins); a version pip
    cannot parse is left out rather than making pip refuse the whole file."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pip always vendors packaging
        from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore
    out = {}
    for name, version in have.items():
        try:
            Version(version)
        except InvalidVersion:
            continue
        out[name] = f"{name}=={version}"
    for name, line in (pins or {}).items():
        out.setdefault(name, line)
    return [out[k] for k in sorted(out)]


def detect_host() -> str:
    if os.environ.get("COMFYUI_PATH") or (HERE.parent.name == "custom_nodes"):
        return "comfyui"
    try:
        import launch  # type: ignore  # noqa: F401  (A1111/Forge's launcher module)
        return "a1111"
    except Exception:
        pass
    return "manual"


def pip_install(packages: list[str], constraint_lines: list[str] | None = None, runner=subprocess.check_call,
                webui_pip=None) -> None:
    """Install ``packages`` holding everything in ``constraint_lines`` where it is."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = []
        if constraint_lines:
            cfile = Path(tmp) / "constraints.txt"
            cfile.write_text("\n".join(constraint_lines) + "\n")
            extra = ["-c", str(cfile)]
        if webui_pip is not None:
            args = " ".join(shlex.quote(a) for a in ["install", *packages, *extra])
            print(f"RewardLoop install: pip {args}", flush=True)
            webui_pip(args, f"RewardLoop requirements: {', '.join(packages)}")
            return
        cmd = [sys.executable, "-m", "pip", "install", *packages, *extra]
        print("RewardLoop install:", " ".join(cmd), flush=True)
        runner(cmd)


def _webui():
    """(launch module, WebUI folder) when run by the A1111/Forge launcher, else (None, None)."""
    try:
        import launch  # type: ignore
    except Exception:
        return None, None
    root = getattr(getattr(launch, "launch_utils", None), "script_path", None) or os.getcwd()
    return launch, Path(root)


def main(argv: list[str] | None = None, runner=subprocess.check_call) -> int:
    ap = argparse.ArgumentParser(description="Install RewardLoop's missing dependencies (never changes installed "
                                             "packages, never torch).")
    ap.add_argument("--download", metavar="PROFILE", help="also download a model profile: light, paper, full, "
                                                          "train, train-xl")
    ap.add_argument("--root", help="models root for --download")
    args = ap.parse_args(argv)
    host = detect_host()
    launch, webui_root = _webui() if host == "a1111" else (None, None)
    if launch is not None and getattr(getattr(launch, "args", None), "skip_install", False):
        print("RewardLoop install: skipped (--skip-install)")
        return 0
    have = installed_versions()
    todo, skipped = plan(have=have)
    if skipped:
        what = "; ".join(f"{line.split(';')[0]} ({why})" for line, why in skipped)
        print(f"RewardLoop install: skipped {what}. It never changes an installed package: a reward that needs "
              f"a newer one says so when it loads.", flush=True)
    if todo:
        pins = host_pins(webui_root)
        pip_install(todo, constraints(have, pins), runner=runner,
                    webui_pip=getattr(launch, "run_pip", None) if launch is not None else None)
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
