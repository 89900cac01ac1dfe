"""Shared fixtures: offline hub, tiny models built once per run under a models root the registry searches.

Real-host tests: every test that runs the pack inside a real host application (ComfyUI's server, its frontend in
headless Chromium, the Forge WebUI) carries ``@pytest.mark.realhost`` (or ``pytestmark``). `.ci/run` prepares the
hosts (``.ci/hosts/prepare_*.sh``) and exports where they are (COMFYUI_PATH, COMFYUI_PYTHON, CHROMIUM_PATH, ...);
a realhost test skips only when its host truly cannot be prepared. Such a skip is never quiet: without CI it is
listed in a banner at the end of the run; with ``CI=true`` it is turned into a failure, so the run fails.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("REWARDLOOP_NO_TQDM", "1")
os.environ.setdefault("REWARDLOOP_DEVICE", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models: thread hand-offs cost more than the maths; one intra-op thread is several times faster than two
# on the 2-core CI machine (and far faster when the cores are shared).
torch.set_num_threads(1)


REALHOST_SKIPS: list[tuple[str, str]] = []


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or item.get_closest_marker("realhost") is None:
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    REALHOST_SKIPS.append((item.nodeid, reason))
    if _ci():
        rep.outcome = "failed"
        rep.longrepr = (f"REAL-HOST TEST SKIPPED IN CI (CI=true): {reason}\n"
                        "The host could not be prepared or found: see the host preparation output of .ci/run.")


def pytest_terminal_summary(terminalreporter):
    if not REALHOST_SKIPS:
        return
    tr = terminalreporter
    verdict = "FAILED (CI=true)" if _ci() else "SKIPPED"
    tr.write_sep("!", f"{len(REALHOST_SKIPS)} REAL-HOST TEST(S) {verdict}", red=True, bold=True)
    for nodeid, reason in REALHOST_SKIPS:
        tr.write_line(f"  {nodeid}: {reason}", red=True)
    tr.write_line("Prepare the hosts with `bash .ci/run` (or .ci/hosts/prepare_*.sh and source the .env files they "
                  "write); see README 'Testing in the real hosts'.", red=True, bold=True)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """A models root laid out like ComfyUI's models/, registered through REWARDLOOP_MODELS."""
    root = tmp_path_factory.mktemp("models")
    old = os.environ.get("REWARDLOOP_MODELS")
    os.environ["REWARDLOOP_MODELS"] = str(root)
    yield root
    if old is None:
        os.environ.pop("REWARDLOOP_MODELS", None)
    else:
        os.environ["REWARDLOOP_MODELS"] = old


@pytest.fixture(scope="session")
def tiny(models_root):
    """``tiny("tiny-blip")`` builds that tiny model once per run and returns its key (resolvable by the registry)."""
    from rewardloop.weights import tiny as tiny_mod

    def get(key: str) -> str:
        tiny_mod.build(key, models_root)
        return key

    return get


@pytest.fixture
def out_env(tmp_path, monkeypatch):
    """Outputs (runs, LoRAs outside ComfyUI) go to a temporary folder."""
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "output"))
    return tmp_path


@pytest.fixture
def fresh_cache():
    from rewardloop.weights.cache import MODEL_CACHE
    MODEL_CACHE.clear()
    yield MODEL_CACHE
    MODEL_CACHE.clear()


def make_image_batch(b: int = 2, h: int = 48, w: int = 64, c: int = 3, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE batch [B,H,W,C] in 0..1 with some structure (gradients + a square)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, h, w, c, generator=g) * 0.2
    img[:, h // 4: h // 2, w // 4: w // 2, :] += 0.7
    img += torch.linspace(0, 0.1, w)[None, None, :, None]
    return img.clamp(0, 1)


@pytest.fixture
def image_batch():
    return make_image_batch


@pytest.fixture
def interrupted_then_resumed():
    """``interrupted_then_resumed(run, at)``: ``run(progress)`` stopped by an interrupt after step ``at``, then
    ``run(None)`` again (it resumes); returns the second call's result."""
    from rewardloop import bridge

    def go(run, at: int):
        def stop(info):
            if info["step"] == at:
                bridge.request_interrupt()

        with pytest.raises(bridge.Interrupted):
            run(stop)
        return run(None)

    return go


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A real ComfyUI with this pack installed as users install it (tests/comfyui_host.py); skips without one."""
    from comfyui_host import start
    yield from start(tmp_path_factory.mktemp("comfyui"))
