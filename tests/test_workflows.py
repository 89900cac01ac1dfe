"""Every workflow file names only existing nodes with valid widget values and well-typed links; the API → UI
converter round-trips; the validator really finds errors (synthetic broken workflows)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from rewardloop.workflows import graph, make_ui, tiny_run

ROOT = Path(__file__).resolve().parents[1]
WF = ROOT / "workflows"
API = WF / "api"
API_FILES = sorted(API.glob("*.api.json"))
UI_FILES = graph.ui_files(WF)


@pytest.fixture(scope="module")
def specs():
    return graph.all_specs()


# ------------------------------------------------------------------ the shipped files
def test_core_nodes_json_is_a_trimmed_object_info():
    data = json.loads(graph.CORE_NODES_PATH.read_text())
    assert len(data["comfyui_commit"]) == 40
    nodes = data["nodes"]
    for name in ("CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
                 "SaveImage", "PreviewImage", "LoadImage", "VAEEncodeForInpaint", "LoraLoader"):
        assert name in nodes, name
    ks = nodes["KSampler"]
    assert ks["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                             "positive", "negative", "latent_image", "denoise"]
    assert ks["output"] == ["LATENT"]
    assert "euler" in ks["input"]["required"]["sampler_name"][0]
    assert "tooltip" not in json.dumps(nodes)  # trimmed
    assert nodes["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] == [[], {"files": "checkpoints"}]


def test_no_core_node_id_collides_with_ours(specs):
    from rewardloop.nodes import NODE_CLASS_MAPPINGS
    core = graph.load_core_specs()
    assert not set(core) & set(NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("path", API_FILES + UI_FILES, ids=lambda p: p.name)
def test_workflow_file_is_valid(path, specs):
    errs = graph.validate_file(path, specs)
    assert not errs, "\n".join(errs)


def test_every_api_workflow_has_an_up_to_date_ui_file(specs):
    lines: list[str] = []
    problems = make_ui.convert_all(WF, check=True, out=lines.append)
    assert problems == 0, "\n".join(lines)
    for api in API_FILES:
        assert make_ui.ui_path(api).is_file(), f"{api.name} has no UI file"


def test_tiny_models_plan_matches_the_workflows():
    """Non-runnable entries say why; runnable ones apply cleanly to their workflow. (A workflow without an entry
    is skipped by the real-ComfyUI test with that reason; an entry whose workflow is not there is ignored.)"""
    plan = tiny_run.load_plan()
    names = {api.name[:-len(".api.json")]: api for api in API_FILES}
    for name, e in plan.items():
        assert e.get("runnable") or e.get("reason"), f"{name}: a non-runnable workflow needs a reason"
        assert isinstance(e.get("models", {}), dict) and isinstance(e.get("set", {}), dict), name
        if e.get("runnable") and name in names:
            prompt = json.loads(names[name].read_text())
            files = {a: "x.safetensors" for a in e.get("models", {})}
            tiny_run.apply(prompt, e, files)
            for nid, vals in e.get("set", {}).items():
                for k in vals:
                    assert k in prompt[nid]["inputs"], f"{name}: tiny plan sets unknown input {nid}.{k}"


def test_validating_an_empty_folder_checks_nothing_and_passes(tmp_path):
    lines: list[str] = []
    assert make_ui.convert_all(tmp_path, out=lines.append) == 0
    assert any("no *.api.json" in ln for ln in lines)


# ------------------------------------------------------------------ synthetic workflows
def _base() -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 2}},
        "4": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                                   "scheduler": "karras", "denoise": 1.0, "model": ["1", 0],
                                                   "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["3", 0]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


def test_synthetic_valid_workflow_passes(specs):
    assert graph.validate_api(_base(), specs) == []


@pytest.mark.parametrize("mutate, expect", [
    (lambda w: w["4"].update(class_type="KSamplerTurbo"), "unknown node type 'KSamplerTurbo'"),
    (lambda w: w["4"]["inputs"].update(sampler_name="euler_fast"), "'euler_fast' is not one of"),
    (lambda w: w["4"]["inputs"].update(steps=0), "below the minimum 1"),
    (lambda w: w["4"]["inputs"].update(steps=2.5), "expected an integer"),
    (lambda w: w["4"]["inputs"].update(cfg="high"), "expected a number"),
    (lambda w: w["4"]["inputs"].update(denoise=1.5), "above the maximum 1.0"),
    (lambda w: w["3"]["inputs"].update(width=True), "expected an integer"),
    (lambda w: w["2"]["inputs"].update(text=3), "expected a string"),
    (lambda w: w["4"]["inputs"].pop("model"), "required input 'model' is missing"),
    (lambda w: w["4"]["inputs"].update(modle=["1", 0]), "unknown input 'modle'"),
    (lambda w: w["4"]["inputs"].update(model=["9", 0]), "links to missing node 9"),
    (lambda w: w["4"]["inputs"].update(model=["1", 5]), "which has 3 outputs"),
    (lambda w: w["4"]["inputs"].update(model=["1", 1]), "wants MODEL but node 1 output 1 is CLIP"),
    (lambda w: w["5"]["inputs"].update(samples=["5", 0]), "wants LATENT but node 5 output 0 is IMAGE"),
    (lambda w: w["1"]["inputs"].update(ckpt_name=""), "expected a file name"),
    (lambda w: w.pop("6"), "no output node"),
])
def test_validator_finds_errors(specs, mutate, expect):
    w = _base()
    mutate(w)
    errs = graph.validate_api(w, specs)
    assert any(expect in e for e in errs), errs


def test_our_node_widgets_are_checked(specs):
    from rewardloop.nodes import NODE_CLASS_MAPPINGS
    assert "RewardLoopShowScores" in NODE_CLASS_MAPPINGS
    w = {"1": {"class_type": "RewardLoopShowScores", "inputs": {"scores": ["2", 0]}},
         "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    errs = graph.validate_api(w, specs)
    assert any("wants REWARDLOOP_SCORES but node 2 output 0 is LATENT" in e for e in errs), errs


def test_custom_specs_combo_bool_and_any_type():
    specs = {
        "Src": {"input": {}, "output": ["FOO", "*"], "output_name": ["foo", "any"], "output_node": False},
        "Dst": {"input": {"required": {"mode": (["a", "b"], {"default": "a"}), "flag": ("BOOLEAN", {}),
                                       "x": ("FOO", {}), "c": ("COMBO", {"options": ["p", "q"]})},
                          "optional": {"y": ("BAR", {}), "n": ("INT", {"forceInput": True})}},
                "output": [], "output_name": [], "output_node": True},
    }
    ok = {"1": {"class_type": "Src", "inputs": {}},
          "2": {"class_type": "Dst", "inputs": {"mode": "b", "flag": False, "x": ["1", 0], "y": ["1", 1], "c": "q"}}}
    assert graph.validate_api(ok, specs) == []
    bad = copy.deepcopy(ok)
    bad["2"]["inputs"].update(flag="yes", mode="z", y=["1", 0], c="r")
    errs = graph.validate_api(bad, specs)
    assert len(errs) == 4, errs


# ------------------------------------------------------------------ API → UI
def test_api_to_ui_layout_widgets_and_links(specs):
    ui = graph.api_to_ui(_base(), specs)
    assert ui["version"] == 0.4 and ui["groups"] == []
    by_id = {n["id"]: n for n in ui["nodes"]}
    ks = by_id[4]
    # widgets in INPUT_TYPES order, with the seed's "control after generate" value after it
    assert ks["widgets_values"] == [7, "fixed", 20, 7.5, "euler", "karras", 1.0]
    assert [i["name"] for i in ks["inputs"]] == ["model", "positive", "negative", "latent_image"]
    assert by_id[3]["widgets_values"] == [512, 512, 2]
    # left to right by depth: loader (0) < encode (1) < sampler (2) < decode (3) < preview (4)
    xs = {nid: n["pos"][0] for nid, n in by_id.items()}
    assert xs[1] == xs[3] < xs[2] < xs[4] < xs[5] < xs[6]
    # links: [id, from, from_slot, to, to_slot, type]; CLIP (slot 1 of node 1) feeds two inputs
    links = {tuple(lk[1:]) for lk in ui["links"]}
    assert (1, 1, 2, 0, "CLIP") in links and (2, 0, 4, 1, "CONDITIONING") in links
    assert (2, 0, 4, 2, "CONDITIONING") in links and (1, 2, 5, 1, "VAE") in links
    assert len(ui["links"]) == 8 and ui["last_link_id"] == 8 and ui["last_node_id"] == 6
    assert sorted(by_id[1]["outputs"][1]["links"]) == sorted(lk[0] for lk in ui["links"] if lk[5] == "CLIP")
    assert graph.validate_ui(ui, specs) == []


def test_api_to_ui_round_trips_widget_values_and_links(specs):
    api = _base()
    back = graph.api_from_ui(graph.api_to_ui(api, specs), specs)
    assert back == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def test_ui_round_trip_of_shipped_workflows(specs):
    for api_path in API_FILES:
        api = json.loads(api_path.read_text())
        back = graph.api_from_ui(graph.api_to_ui(api, specs), specs)
        want = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
        assert back == want, api_path.name


def test_api_to_ui_non_numeric_ids_and_load_image_upload_slot(specs):
    api = {"load": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
           "7": {"class_type": "PreviewImage", "inputs": {"images": ["load", 0]}}}
    ui = graph.api_to_ui(api, specs)
    by_type = {n["type"]: n for n in ui["nodes"]}
    assert by_type["LoadImage"]["id"] == 8  # after the largest numeric id
    assert by_type["LoadImage"]["widgets_values"] == ["cat.png", "image"]
    assert graph.validate_ui(ui, specs) == []
    back = graph.api_from_ui(ui, specs)
    assert back["8"]["inputs"] == {"image": "cat.png"} and back["7"]["inputs"] == {"images": ["8", 0]}


def test_api_to_ui_refuses_invalid_and_cyclic_workflows(specs):
    bad = _base()
    bad["4"]["inputs"]["steps"] = -1
    with pytest.raises(ValueError, match="below the minimum"):
        graph.api_to_ui(bad, specs)
    cyc = {"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
           "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}
    with pytest.raises(ValueError, match="cycle"):
        graph.api_to_ui(cyc, specs)


@pytest.mark.parametrize("mutate, expect", [
    (lambda ui, n: n[4].update(type="NoSuchNode"), "unknown node type 'NoSuchNode'"),
    (lambda ui, n: n[4]["widgets_values"].pop(), "6 widget values, expected 7"),
    (lambda ui, n: n[4]["widgets_values"].__setitem__(4, "bogus"), "'bogus' is not one of"),
    (lambda ui, n: n[3]["widgets_values"].__setitem__(0, 0), "below the minimum 16"),
    (lambda ui, n: ui["links"].append([99, 1, 0, 42, 0, "MODEL"]), "connects missing node 42"),
    (lambda ui, n: ui["links"][0].__setitem__(2, 7), "has no output slot 7"),
    (lambda ui, n: ui["links"][0].__setitem__(5, "LATENT"), "declared type LATENT"),
    (lambda ui, n: n[5]["inputs"][0].update(link=77), "uses missing link 77"),
    (lambda ui, n: n[4]["inputs"][0].update(type="CLIP"), "declared as CLIP, node wants MODEL"),
])
def test_ui_validator_finds_errors(specs, mutate, expect):
    ui = graph.api_to_ui(_base(), specs)
    nodes = {n["id"]: n for n in ui["nodes"]}
    mutate(ui, nodes)
    errs = graph.validate_ui(ui, specs)
    assert any(expect in e for e in errs), errs


def test_make_ui_writes_then_reports_fresh(tmp_path, specs):
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "demo.api.json").write_text(json.dumps(_base()))
    lines: list[str] = []
    assert make_ui.convert_all(tmp_path, out=lines.append) == 0
    assert (tmp_path / "demo.json").is_file() and "wrote   demo.json" in lines
    assert make_ui.convert_all(tmp_path, check=True, out=lines.append) == 0
    (tmp_path / "demo.json").write_text(json.dumps({"nodes": []}))
    lines.clear()
    assert make_ui.convert_all(tmp_path, check=True, out=lines.append) == 1 and "STALE" in lines[0]
    broken = _base()
    broken["4"]["inputs"]["scheduler"] = "nope"
    (tmp_path / "api" / "broken.api.json").write_text(json.dumps(broken))
    lines.clear()
    assert make_ui.convert_all(tmp_path, out=lines.append) >= 1
    assert any(ln.startswith("INVALID broken.api.json") for ln in lines) and not (tmp_path / "broken.json").exists()


def test_cli_workflows_subcommand(tmp_path, capsys):
    from rewardloop import cli
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "demo.api.json").write_text(json.dumps(_base()))
    assert cli.main(["workflows", "--folder", str(tmp_path)]) == 0
    assert (tmp_path / "demo.json").is_file()
    assert cli.main(["workflows", "--folder", str(tmp_path), "--check"]) == 0
    out = tmp_path / "core.json"
    info = {"KSampler": {"input": {"required": {"seed": ["INT", {"min": 0, "tooltip": "t"}],
                                                "sampler_name": ["COMBO", {"options": ["euler"]}]}},
                         "input_order": {"required": ["seed", "sampler_name"]}, "output": ["LATENT"]}}
    (tmp_path / "oi.json").write_text(json.dumps(info))
    assert cli.main(["workflows", "core-nodes", "--object-info", str(tmp_path / "oi.json"), "--commit", "abc",
                     "--core-nodes", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["comfyui_commit"] == "abc"
    assert saved["nodes"]["KSampler"]["input"]["required"] == {"seed": ["INT", {"min": 0}],
                                                               "sampler_name": [["euler"], {}]}


def test_tiny_plan_apply(tmp_path):
    plan = {"w": {"runnable": True, "models": {"ckpt": ["tiny-sd15-single"]},
                  "set": {"1": {"ckpt_name": "@ckpt"}, "4": {"steps": 2}}, "replace": {"a cat": "a dog"}},
            "x": {"runnable": False, "reason": "needs a real SAM"}}
    out = tiny_run.apply(_base(), plan["w"], {"ckpt": "tiny.safetensors"})
    assert out["1"]["inputs"]["ckpt_name"] == "tiny.safetensors" and out["4"]["inputs"]["steps"] == 2
    assert out["2"]["inputs"]["text"] == "a dog"
    assert tiny_run.entry_for("x", plan) == (False, "needs a real SAM")
    assert tiny_run.entry_for("w", plan) == (True, "")
    assert tiny_run.entry_for("missing", plan)[0] is False
    with pytest.raises(KeyError, match="node 9"):
        tiny_run.apply(_base(), {"set": {"9": {"x": 1}}}, {})
    with pytest.raises(KeyError, match="alias"):
        tiny_run.apply(_base(), {"set": {"1": {"ckpt_name": "@vae"}}}, {})


def test_ui_validator_skips_editor_only_nodes(specs):
    ui = graph.api_to_ui(_base(), specs)
    ui["nodes"].append({"id": 50, "type": "Note", "pos": [0, 0], "size": [100, 50], "inputs": [], "outputs": [],
                        "widgets_values": ["remember the negative prompt"]})
    assert graph.validate_ui(ui, specs) == []


def test_workflows_folder_holds_only_ui_workflows_each_with_a_thumbnail():
    """ComfyUI's template browser lists every workflows/*.json of the pack (app/custom_node_manager.py) and shows
    workflows/<name>.jpg as its thumbnail (the frontend asks for `<name>.jpg`)."""
    from PIL import Image
    jsons = sorted(WF.glob("*.json"))
    assert jsons == UI_FILES and jsons, [p.name for p in jsons]
    for ui in jsons:
        assert "nodes" in json.loads(ui.read_text()), f"{ui.name} is not a UI workflow"
        assert (API / (ui.stem + ".api.json")).is_file(), f"{ui.name} has no API source"
        thumb = ui.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} missing: REWARDLOOP_UPDATE_THUMBNAILS=1 pytest tests/test_comfyui_frontend.py"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.width >= 256, (thumb.name, im.format, im.size)


def test_ui_workflows_have_groups_with_notes_covering_every_node():
    layouts = make_ui.load_layouts(API)
    for ui_path in UI_FILES:
        ui = json.loads(ui_path.read_text())
        assert ui_path.stem in layouts, f"add a layout for {ui_path.stem} to workflows/api/layout.json"
        groups, nodes = ui["groups"], ui["nodes"]
        notes = [n for n in nodes if n["type"] == "Note"]
        assert groups and len(notes) == len(groups), ui_path.name
        for n in nodes:  # every node sits inside one group's rectangle
            x, y = n["pos"]
            inside = [g for g in groups if g["bounding"][0] <= x and x + n["size"][0] <= g["bounding"][0] +
                      g["bounding"][2] and g["bounding"][1] <= y and y + n["size"][1] <= g["bounding"][1] +
                      g["bounding"][3]]
            assert len(inside) == 1, f"{ui_path.name}: node {n['id']} ({n['type']}) is in {len(inside)} groups"
        for a in groups:  # groups do not overlap
            for b in groups:
                if a is not b:
                    ax, ay, aw, ah = a["bounding"]
                    bx, by, bw, bh = b["bounding"]
                    assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay, (a["title"], b["title"])


def test_every_workflow_has_a_tiny_plan_entry_and_its_extras_fit():
    """Each shipped workflow is either run by the real-ComfyUI test or says why not; input images the plan writes
    are the ones the workflow's LoadImage nodes load, and a LoRA a workflow requires is written by a workflow that
    runs before it (the real test runs them in file-name order)."""
    plan = tiny_run.load_plan()
    order = [api.name[:-len(".api.json")] for api in sorted(API_FILES)]
    for name in order:
        assert name in plan, f"add an entry for {name} to workflows/api/tiny_models.json"
    for i, name in enumerate(order):
        e = plan[name]
        prompt = json.loads((API / f"{name}.api.json").read_text())
        loaded = {n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"}
        assert set(e.get("inputs", {})) == loaded, f"{name}: plan inputs {sorted(e.get('inputs', {}))} != {sorted(loaded)}"
        for lora in e.get("requires", []):
            writers = []
            for earlier in order[:i]:
                ep = tiny_run.apply(json.loads((API / f"{earlier}.api.json").read_text()), plan[earlier],
                                    {a: "x.safetensors" for a in plan[earlier].get("models", {})})
                writers += [n["inputs"]["output_name"] + ".safetensors" for n in ep.values()
                            if n["class_type"] == "RewardLoopPersonalizeDPG"]
            assert lora in writers, f"{name} requires {lora}, which no earlier workflow writes ({writers})"
            applied = tiny_run.apply(prompt, e, {a: "x.safetensors" for a in e.get("models", {})})
            assert lora in [n["inputs"].get("lora_name") for n in applied.values()], name


def test_readme_lists_every_workflow_with_its_thumbnail():
    readme = (WF.parent / "README.md").read_text()
    section = readme[readme.index("## Workflows"):readme.index("## Command line")]
    for api in API_FILES:
        name = api.name[:-len(".api.json")]
        assert f"| [`{name}`](workflows/{name}.json) |" in section, f"README: add a table row for {name}"
        assert f"(workflows/{name}.jpg)" in section, f"README: add the thumbnail of {name}"
    gallery = (WF.parent / "docs" / "workflows.md").read_text()
    for api in API_FILES:
        name = api.name[:-len(".api.json")]
        assert f"![{name} workflow](../workflows/{name}.jpg)" in gallery, f"docs/workflows.md: add {name}"
