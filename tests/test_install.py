"""install.py installs only what is missing, never torch, and is a no-op when everything is present."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def install():
    spec = importlib.util.spec_from_file_location("rewardloop_install_under_test", ROOT / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_noop_when_everything_is_present(install, capsys):
    calls = []
    t0 = time.perf_counter()
    assert install.missing_requirements() == []
    assert install.main([], runner=lambda cmd, **kw: calls.append(cmd)) == 0
    assert calls == [] and time.perf_counter() - t0 < 5
    assert "nothing to install" in capsys.readouterr().out


def test_installs_only_missing_and_never_torch(install):
    lines = ["numpy>=1.0", "torch>=99", "torchvision", "surely-not-installed-pkg>=1.0", "numpy>=9999"]
    missing = install.missing_requirements(lines)
    assert missing == ["surely-not-installed-pkg>=1.0", "numpy>=9999"]
    calls = []
    install.pip_install(missing, runner=lambda cmd: calls.append(cmd))
    assert calls[0][:4] == [sys.executable, "-m", "pip", "install"]
    assert not any("torch" in c for c in calls[0])


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
