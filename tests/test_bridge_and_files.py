"""The ComfyUI bridge's fallbacks and ComfyUI path, and safe file handling."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from rewardloop import bridge
from rewardloop.fileio import OutputExistsError, UnsafeNameError, atomic_write, safe_output_path


def test_fallbacks_without_comfyui():
    assert not bridge.in_comfyui()
    assert bridge.get_device() == torch.device("cpu")  # REWARDLOOP_DEVICE=cpu in tests
    assert bridge.offload_device() == torch.device("cpu")
    assert bridge.parse_dtype("auto", torch.device("cpu")) == torch.float32
    with bridge.Progress(3, "x") as p:
        p.update()
        p.update(2)
    assert p.n == 3


def test_interrupt_stops_a_loop():
    bridge.request_interrupt()
    with pytest.raises(bridge.Interrupted):
        with bridge.Progress(10) as p:
            for _ in range(10):
                p.update()
    bridge.check_interrupt()  # the flag was consumed


def test_uses_comfyui_services_when_present(monkeypatch, tmp_path):
    calls = []
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.free_memory = lambda n, d: calls.append(("free", n))
    mm.soft_empty_cache = lambda: calls.append(("empty",))

    class Stop(Exception):
        pass

    state = {"stop": False}

    def throw():
        if state["stop"]:
            raise Stop()

    mm.throw_exception_if_processing_interrupted = throw
    mm.InterruptProcessingException = Stop
    utils = types.ModuleType("comfy.utils")

    class PB:
        def __init__(self, total, node_id=None):
            calls.append(("pb", total))

        def update(self, n):
            calls.append(("upd", n))

    utils.ProgressBar = PB
    comfy = types.ModuleType("comfy")
    comfy.utils = utils
    comfy.model_management = mm
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"loras": ([str(tmp_path / "models" / "loras")], {".safetensors"})}
    fp.get_folder_paths = lambda n: fp.folder_names_and_paths[n][0]
    fp.get_output_directory = lambda: str(tmp_path / "out")
    for name, mod in {"comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils,
                      "folder_paths": fp}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    assert bridge.in_comfyui()
    bridge.register_model_folders()
    bridge.register_model_folders()  # idempotent
    assert fp.folder_names_and_paths["sams"][0] == [str(tmp_path / "models" / "sams")]
    assert bridge.loras_dir() == tmp_path / "models" / "loras"
    assert bridge.output_dir() == tmp_path / "out"
    p = bridge.Progress(2, console=False)
    p.update()
    assert ("pb", 2) in calls and ("upd", 1) in calls
    state["stop"] = True
    with pytest.raises(bridge.interrupt_exceptions()):
        p.update()
    bridge.offload(torch.nn.Linear(2, 2))
    assert ("empty",) in calls


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "C:\\x", "", "  ", "x/./y", "na$me"])
def test_output_names_cannot_escape(tmp_path, bad):
    with pytest.raises(UnsafeNameError):
        safe_output_path(tmp_path, bad, ".safetensors")


def test_output_names_never_overwrite_unless_asked(tmp_path):
    p = safe_output_path(tmp_path, "people/alice", ".safetensors")
    assert p == tmp_path / "people" / "alice.safetensors"
    p.parent.mkdir()
    p.write_text("old")
    with pytest.raises(OutputExistsError, match="overwrite"):
        safe_output_path(tmp_path, "people/alice", ".safetensors")
    assert safe_output_path(tmp_path, "people/alice", ".safetensors", overwrite=True) == p


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("new, half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"


def test_progress_bar_shows_the_current_steps_loss(monkeypatch):
    """Each redraw of the console bar carries the values passed with that update, not the previous step's."""
    import io
    monkeypatch.delenv("REWARDLOOP_NO_TQDM", raising=False)

    class Terminal(io.StringIO):  # the bar draws only on a terminal
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = bridge.Progress(3, desc="train")
    assert bar._tqdm is not None
    bar._tqdm.mininterval, bar._tqdm.miniters = 0, 0
    drawn = []
    monkeypatch.setattr(bar._tqdm, "display", lambda *a, **k: drawn.append(bar._tqdm.postfix))
    for step, loss in enumerate((0.9, 0.5, 0.1), 1):
        bar.update(1, postfix={"loss": f"{loss:.1f}"})
        assert drawn and drawn[-1] == f"loss={loss:.1f}", (step, drawn)
    bar.close()


def test_model_lists_skip_comfyui_placeholders(tmp_path, monkeypatch):
    monkeypatch.setenv("REWARDLOOP_MODELS", str(tmp_path))
    for folder, marker in (("checkpoints", "put_checkpoints_here"), ("diffusers", "put_diffusers_models_here"),
                           ("clip", "put_clip_or_text_encoder_models_here")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / marker).write_text("")
    (tmp_path / "checkpoints" / "real.safetensors").write_bytes(b"x")
    (tmp_path / "diffusers" / "my-sd").mkdir()
    (tmp_path / "clip" / "notes.txt").write_text("not a model")
    assert "real.safetensors" in bridge.list_folder("checkpoints")
    assert "my-sd" in bridge.list_folder("diffusers")
    listed = bridge.list_folder("checkpoints") + bridge.list_folder("diffusers") + bridge.list_folder("clip")
    assert not [n for n in listed if n.startswith("put_")] and "notes.txt" not in listed, listed
