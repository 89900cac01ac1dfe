"""install.py: installs only what is missing, never changes an installed package, says in one line what it skipped.

Run by the real Forge launcher (with the pip freeze before/after compared) in tests/test_forge_real.py; here: the
decisions on hand-made package sets, the pip command lines, and the script run as ComfyUI-Manager / a user runs it.
"""
from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def install(monkeypatch):
    spec = importlib.util.spec_from_file_location("rewardloop_install_under_test", ROOT / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    return mod


def test_plan_installs_missing_keeps_installed_and_knows_opencv_builds(install):
    have = {"numpy": "1.26.2", "transformers": "4.30.2", "opencv-python": "4.11.0.86", "torch": "2.1.0"}
    lines = ["numpy>=1.26", "transformers>=4.46.1", "opencv-python-headless>=4.11", "torch>=99", "gguf>=0.19",
             "segment-anything>=1.0", "legacy-only>=1; python_version < '3.0'"]
    todo, skipped = install.plan(lines, have)
    assert todo == ["gguf>=0.19", "segment-anything>=1.0"]
    assert skipped == [("transformers>=4.46.1", "transformers 4.30.2 is installed and kept; RewardLoop asks >=4.46.1"),
                       ("opencv-python-headless>=4.11", "opencv-python 4.11.0.86 provides the same module")]
    assert install.plan(["opencv-python-headless>=4.11"], {"opencv-python-headless": "4.8.0"})[1][0][1].startswith(
        "opencv-python-headless 4.8.0 is installed and kept")
    assert install.missing_requirements(["numpy>=1.0", "surely-not-installed-pkg>=1.0"]) == \
        ["surely-not-installed-pkg>=1.0"]


def test_constraints_hold_every_installed_package_and_the_host_pins(install, tmp_path):
    (tmp_path / "requirements_versions.txt").write_text("numpy==1.26.2  # pinned\ntorch\nPillow==9.5.0\n-e x\n")
    pins = install.host_pins(tmp_path)
    assert pins == {"numpy": "numpy==1.26.2", "pillow": "Pillow==9.5.0"}
    assert install.constraints({"numpy": "2.0.0", "scipy": "1.16.3", "odd": "not a version"}, pins) == \
        ["numpy==2.0.0", "Pillow==9.5.0", "scipy==1.16.3"]  # what is installed wins over the file


def test_pip_commands_under_the_webui_and_elsewhere(install):
    seen = []
    install.pip_install(["gguf>=0.19"], ["numpy==1.26.2"], webui_pip=lambda args, desc: seen.append((args, desc)))
    args, desc = seen[0]
    words = shlex.split(args)  # launch.run_pip runs it through a shell: '>=' must be quoted
    assert words[:2] == ["install", "gguf>=0.19"] and words[2] == "-c" and "gguf" in desc
    calls = []
    install.pip_install(["gguf>=0.19"], None, runner=lambda cmd: calls.append(cmd))
    assert calls == [[sys.executable, "-m", "pip", "install", "gguf>=0.19"]]


def _fake_launch(monkeypatch, skip, webui_root):
    launch = types.ModuleType("launch")
    launch.args = types.SimpleNamespace(skip_install=skip)
    launch.launch_utils = types.SimpleNamespace(script_path=str(webui_root))
    launch.calls = []
    launch.run_pip = lambda args, desc: launch.calls.append(args)
    monkeypatch.setitem(sys.modules, "launch", launch)
    return launch


def test_under_the_webui_honours_skip_install_and_uses_run_pip(install, monkeypatch, capsys, tmp_path):
    if install.HERE.parent.name == "custom_nodes":
        pytest.skip("checkout lives in a custom_nodes folder: detected as ComfyUI by design")
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    assert install.detect_host() == "manual"
    launch = _fake_launch(monkeypatch, True, tmp_path)
    assert install.detect_host() == "a1111"
    assert install.main([]) == 0 and launch.calls == []
    assert "skipped (--skip-install)" in capsys.readouterr().out
    launch = _fake_launch(monkeypatch, False, tmp_path)
    (tmp_path / "requirements_versions.txt").write_text("numpy==1.26.2\n")
    monkeypatch.setattr(install, "plan", lambda lines=None, have=None: (["surely-missing>=1"], []))
    assert install.main([], runner=lambda cmd: pytest.fail("pip outside run_pip")) == 0
    assert launch.calls and shlex.split(launch.calls[0])[:2] == ["install", "surely-missing>=1"]
    monkeypatch.setenv("COMFYUI_PATH", "/somewhere/ComfyUI")
    assert install.detect_host() == "comfyui"  # the Manager sets COMFYUI_PATH: never treated as A1111


def test_noop_when_everything_is_present(install, capsys):
    calls = []
    t0 = time.perf_counter()
    assert install.missing_requirements() == []
    assert install.main([], runner=lambda cmd, **kw: calls.append(cmd)) == 0
    assert calls == [] and time.perf_counter() - t0 < 5
    assert "nothing to install" in capsys.readouterr().out


def test_runs_as_a_script(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "nothing to install" in out.stdout


def test_download_flag_offline_fails_with_one_line(tmp_path):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "install.py"), "--download", "light", "--root", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert out.returncode == 1
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "blip-large" in err[0] and str(tmp_path) in err[0]
    assert "Traceback" not in out.stderr
