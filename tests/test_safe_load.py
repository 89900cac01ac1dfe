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


# ---------------------------------------------------------------- SAM: architecture validated before allocating
def _tiny_sam_sd():
    from rewardloop.weights.tiny import TINY_SAM, make_sam
    return make_sam(**TINY_SAM).state_dict()


def test_sam_state_dict_validation_accepts_the_real_layout():
    from rewardloop.weights.loaders import validate_sam_state_dict
    from rewardloop.weights.tiny import TINY_SAM
    cfg = validate_sam_state_dict(_tiny_sam_sd())
    assert {k: cfg[k] for k in ("embed_dim", "depth", "img_size")} == {k: TINY_SAM[k] for k in
                                                                       ("embed_dim", "depth", "img_size")}


@pytest.mark.parametrize("attack, message", [
    ("deep", "depth 200 is larger than any SAM model's"),
    ("missing", "missing"),
    ("extra", "unexpected"),
    ("shape", "of another shape"),
    ("stride0", "declares"),
])
def test_sam_state_dict_lies_are_refused_before_allocating(attack, message, monkeypatch):
    from rewardloop.weights import tiny
    from rewardloop.weights.loaders import validate_sam_state_dict
    sd = _tiny_sam_sd()
    if attack == "deep":      # a few small tensors naming block indices up to 199 would build 200 encoder blocks
        for i in range(2, 200):
            sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"] = torch.zeros(7, 32)
    elif attack == "missing":
        del sd["mask_decoder.iou_token.weight"]
    elif attack == "extra":
        sd["image_encoder.extra.weight"] = torch.zeros(3)
    elif attack == "shape":
        sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 33)
    else:                     # a zero-stride view: big declared shape over a one-element storage
        sd["image_encoder.pos_embed"] = torch.zeros(1).expand(*sd["image_encoder.pos_embed"].shape)
        sd = {k: (torch.zeros(1).expand(*v.shape) if v.numel() > 1000 else v) for k, v in sd.items()}
    built = []
    real = tiny.make_sam
    monkeypatch.setattr(tiny, "make_sam", lambda **kw: built.append(torch.empty(0).device) or real(**kw))
    with pytest.raises(ValueError, match=message):
        validate_sam_state_dict(sd, "bad.pth")
    assert all(d.type == "meta" for d in built)            # nothing was built for real


@pytest.mark.slow
def test_small_lying_sam_file_costs_no_memory(tmp_path):
    """A 12 KB .pth whose tensors claim ViT-H sizes (zero-stride views) used to cost 3.2 GB RSS and 50 s."""
    import subprocess
    import sys
    z = lambda *shape: torch.zeros(1).expand(*shape)  # noqa: E731
    sd = {"image_encoder.patch_embed.proj.weight": z(1280, 3, 16, 16), "image_encoder.pos_embed": z(1, 64, 64, 1280),
          "image_encoder.neck.0.weight": z(256, 1280, 1, 1),
          "mask_decoder.transformer.layers.1.mlp.lin1.weight": z(2048, 256),
          "mask_decoder.transformer.layers.0.mlp.lin1.weight": z(2048, 256),
          "prompt_encoder.mask_downscaling.3.weight": z(16, 4, 2, 2),
          "mask_decoder.iou_prediction_head.layers.0.weight": z(256, 256)}
    for i in range(32):
        sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"] = z(127 if i % 8 == 7 else 27, 80)
    path = tmp_path / "sam_vit_h_fake.pth"
    torch.save(sd, path)
    assert path.stat().st_size < 100_000
    code = ("import resource, sys\nfrom rewardloop.weights.loaders import load_sam\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_sam(sys.argv[1], device='cpu')\nexcept ValueError as e:\n    print('refused:', e)\n"
            "print('grew_mb', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert "refused:" in out.stdout, out.stdout + out.stderr[-2000:]
    grew = float(out.stdout.split("grew_mb")[1])
    assert grew < 300, f"refusing the file grew the process by {grew:.0f} MB"
