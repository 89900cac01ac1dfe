"""The CLI runs; every node class satisfies ComfyUI's V1 contract."""
from __future__ import annotations

import subprocess
import sys

import pytest

import rewardloop
from rewardloop.cli import main

NODES = sorted(rewardloop.NODE_CLASS_MAPPINGS.items())
BUILTIN = {"IMAGE", "MASK", "LATENT", "MODEL", "CLIP", "VAE", "CONDITIONING", "INT", "FLOAT", "STRING", "BOOLEAN",
           "*"}


@pytest.mark.parametrize("node_id,cls", NODES, ids=[n for n, _ in NODES])
def test_node_contract(node_id, cls):
    assert node_id.startswith("RewardLoop"), "node ids are prefixed"
    assert node_id in rewardloop.NODE_DISPLAY_NAME_MAPPINGS
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, name
            typ = entry[0]
            assert isinstance(typ, (str, list)), name
            if isinstance(typ, str):
                assert typ in BUILTIN or typ.startswith("REWARDLOOP_"), f"{node_id}.{name}: unprefixed type {typ}"
            opts = entry[1] if len(entry) == 2 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(typ, list):
                assert typ, f"{node_id}.{name}: empty combo"
                if "default" in opts:
                    assert opts["default"] in typ
            if typ in ("INT", "FLOAT") and "default" in opts:
                assert opts.get("min", float("-inf")) <= opts["default"] <= opts.get("max", float("inf"))
    assert isinstance(cls.RETURN_TYPES, tuple)
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    assert len(names) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY.startswith("RewardLoop")
    assert getattr(cls, "DESCRIPTION", "")
    if hasattr(cls, "OUTPUT_IS_LIST"):
        assert len(cls.OUTPUT_IS_LIST) == len(cls.RETURN_TYPES)


def test_show_scores_node():
    from rewardloop.rewards.types import RewardScores
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopShowScores"]()
    out = node.show(RewardScores("caption", [0.5, 0.25], True, (-1, 1)),
                    RewardScores("sam_llm", [0.1, -0.2], True, (-0.5, 0.5)))
    table = out["result"][0]
    assert out["ui"]["text"] == [table]
    assert "caption (↑)" in table and "0.2500" in table and "-0.2000" in table
    with pytest.raises(ValueError, match="same images"):
        node.show(RewardScores("a", [1.0]), RewardScores("b", [1.0, 2.0]))


def test_cli_models_and_selftest(capsys, tiny):
    assert main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    assert "blip2-opt-2.7b" in out and "tiny-sam" in out
    assert main(["selftest", "--only", "registry"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
    assert main(["download"]) == 1
    assert "--profile" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "rewardloop", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "selftest" in out.stdout
