"""Checkpoints that would run code when unpickled are refused, and the code never runs."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from rewardloop.weights.safe_load import UnsafeCheckpointError, load_state_dict, save_state_dict


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".ckpt"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, suffix):
    marker = tmp_path / "pwned"
    bad = tmp_path / f"evil{suffix}"
    torch.save({"weight": torch.zeros(2), "trap": _Payload(marker)}, bad)
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        load_state_dict(bad)
    assert not marker.exists(), "the pickle payload ran"
    # sanity: plain unpickling *would* have run it, so the test can fail
    with open(bad, "rb") as f:
        assert f.read(2)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_plain_state_dicts_load_from_pth_and_safetensors(tmp_path):
    sd = {"a": torch.arange(4.0), "b.c": torch.ones(2, 2)}
    torch.save(sd, tmp_path / "m.pth")
    got = load_state_dict(tmp_path / "m.pth")
    assert torch.equal(got["a"], sd["a"])
    torch.save({"state_dict": sd}, tmp_path / "wrapped.ckpt")
    assert set(load_state_dict(tmp_path / "wrapped.ckpt")) == {"a", "b.c"}
    save_state_dict(sd, tmp_path / "m.safetensors", metadata={"k": "v"})
    got = load_state_dict(tmp_path / "m.safetensors")
    assert torch.equal(got["b.c"], sd["b.c"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
