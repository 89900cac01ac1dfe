"""Shared fixtures: offline hub, tiny models built once per run under a models root the registry searches."""
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
