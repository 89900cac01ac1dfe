"""Node specs, workflow validation and API → UI conversion for ComfyUI workflows (no ComfyUI needed).

A *spec* is what ComfyUI's ``/object_info`` returns for one node (``input``, ``input_order``, ``output``,
``output_name``, ``output_is_list``, ``output_node``). Our specs are built from ``NODE_CLASS_MAPPINGS``
(``INPUT_TYPES`` / ``RETURN_TYPES``); core ComfyUI specs come from ``tests/data/core_nodes.json``, a trimmed
copy of a real ComfyUI's ``/object_info`` (``python -m rewardloop workflows core-nodes`` regenerates it).

Two workflow formats:
  * API format ``api/<use>.api.json``: ``{node_id: {"class_type": str, "inputs": {name: value | [src_id, out_idx]}}}``
    (what ``POST /prompt`` takes);
  * UI (editor) format ``<use>.json`` (only these sit in ``workflows/``: ComfyUI's template browser lists every
    ``custom_nodes/<pack>/workflows/*.json``, with ``<use>.jpg`` as its thumbnail): ``{"nodes": [...], "links": [...], "version": 0.4, ...}``.

``validate_api`` / ``validate_ui`` return a list of human-readable problems (empty = valid).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PACK_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = Path(__file__).resolve().parent   # UI workflows (+ .jpg thumbnails): ComfyUI's template browser
API_DIR = WORKFLOWS_DIR / "api"                   # API-format sources and the tiny-model plan (not listed there)
CORE_NODES_PATH = PACK_ROOT / "tests" / "data" / "core_nodes.json"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# editor-only nodes: they exist in UI files but never reach the server (no /object_info entry)
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SEED_NAMES = {"seed", "noise_seed"}
EMPTY_WIDGET_VALUES = {"STRING": "", "INT": 0, "FLOAT": 0.0, "BOOLEAN": False}  # the frontend adds a "control after generate" widget value after these


# ------------------------------------------------------------------ specs
def spec_from_class(cls) -> dict:
    """``/object_info``-shaped spec of a classic (V1) node class, as ComfyUI's server builds it."""
    inputs = cls.INPUT_TYPES()
    out_types = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", None) or out_types)
    is_list = list(getattr(cls, "OUTPUT_IS_LIST", None) or [False] * len(out_types))
    return {
        "input": {k: dict(v) for k, v in inputs.items()},
        "input_order": {k: list(v.keys()) for k, v in inputs.items()},
        "output": out_types,
        "output_name": names,
        "output_is_list": is_list,
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


def our_specs() -> dict[str, dict]:
    from ..nodes import NODE_CLASS_MAPPINGS
    return {k: spec_from_class(c) for k, c in NODE_CLASS_MAPPINGS.items()}


def load_core_specs(path: str | Path | None = None) -> dict[str, dict]:
    p = Path(path) if path else CORE_NODES_PATH
    if not p.is_file():
        raise FileNotFoundError(f"core node list {p} is missing; regenerate it with "
                                "`python -m rewardloop workflows core-nodes --url http://127.0.0.1:8188`")
    try:
        return json.loads(p.read_text())["nodes"]
    except (ValueError, KeyError, TypeError) as e:
        from ..errors import UserError
        raise UserError(f"core node list {p} is not a core_nodes.json file ({type(e).__name__}: {e}); regenerate it "
                        "with `python -m rewardloop workflows core-nodes --url http://127.0.0.1:8188`.") from None


def all_specs(core_path: str | Path | None = None) -> dict[str, dict]:
    specs = dict(load_core_specs(core_path))
    specs.update(our_specs())
    return specs


def parse_input(entry) -> tuple[str, dict, list | None]:
    """``(TYPE, opts)`` / ``([choices], opts)`` / ``("COMBO", {"options": [...]})`` → (type, opts, choices)."""
    if isinstance(entry, (list, tuple)):
        t = entry[0]
        opts = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
    else:
        t, opts = entry, {}
    if isinstance(t, (list, tuple)):
        return "COMBO", opts, list(t)
    if t == "COMBO":
        return "COMBO", opts, list(opts.get("options", []))
    return str(t), opts, None


def input_entries(spec: dict) -> list[tuple[str, str, dict, list | None, bool]]:
    """(name, type, opts, choices, required) in declaration order (required first, then optional)."""
    out = []
    for section in ("required", "optional"):
        sec = spec.get("input", {}).get(section, {}) or {}
        order = spec.get("input_order", {}).get(section) or list(sec.keys())
        for name in order:
            t, opts, choices = parse_input(sec[name])
            out.append((name, t, opts, choices, section == "required"))
    return out


def is_widget(t: str, opts: dict) -> bool:
    return t in WIDGET_TYPES and not opts.get("forceInput", False)


def widget_slots(name: str, t: str, opts: dict) -> int:
    """How many entries of ``widgets_values`` one widget input takes in the UI format."""
    n = 1
    if t == "INT" and (opts.get("control_after_generate") or name in SEED_NAMES):
        n += 1  # "fixed" / "increment" / "decrement" / "randomize"
    if opts.get("image_upload"):
        n += 1  # the upload button's value ("image")
    return n


def types_match(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type):
        return True
    outs = set(str(out_type).split(","))
    ins = set(str(in_type).split(","))
    return bool(outs & ins)


def check_value(name: str, t: str, opts: dict, choices: list | None, value: Any) -> str | None:
    """Why ``value`` is not valid for this widget input, or None."""
    if t == "COMBO":
        if opts.get("files"):  # a file list that depends on the installation: any file name
            return None if isinstance(value, str) and value else f"{name}: expected a file name, got {value!r}"
        if opts.get("multi_select"):
            vals = value if isinstance(value, list) else [value]
            bad = [v for v in vals if v not in (choices or [])]
            return f"{name}: {bad!r} not among the choices {choices!r}" if bad else None
        if value not in (choices or []):
            shown = choices if len(choices or []) <= 12 else (choices[:12] + ["…"])
            return f"{name}: {value!r} is not one of {shown!r}"
        return None
    if t == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                return f"{name}: expected an integer, got {value!r}"
    elif t == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name}: expected a number, got {value!r}"
    elif t == "STRING":
        if not isinstance(value, str):
            return f"{name}: expected a string, got {value!r}"
        return None
    elif t == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: expected true/false, got {value!r}"
    else:
        return f"{name}: input of type {t} takes a link, not the value {value!r}"
    lo, hi = opts.get("min"), opts.get("max")
    if lo is not None and value < lo:
        return f"{name}: {value} is below the minimum {lo}"
    if hi is not None and value > hi:
        return f"{name}: {value} is above the maximum {hi}"
    return None


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int) \
        and not isinstance(v[1], bool)


# ------------------------------------------------------------------ API format
def validate_api(prompt: dict, specs: dict[str, dict]) -> list[str]:
    errs: list[str] = []
    if not isinstance(prompt, dict) or not prompt:
        return ["workflow is empty or not an object of node id → node"]
    has_output = False
    for nid, node in prompt.items():
        where = f"node {nid}"
        if not isinstance(node, dict) or "class_type" not in node:
            errs.append(f"{where}: missing class_type")
            continue
        ct = node["class_type"]
        where = f"node {nid} ({ct})"
        spec = specs.get(ct)
        if spec is None:
            errs.append(f"{where}: unknown node type {ct!r} (not a RewardLoop node nor in core_nodes.json)")
            continue
        has_output |= bool(spec.get("output_node"))
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            errs.append(f"{where}: inputs must be an object")
            continue
        entries = {e[0]: e for e in input_entries(spec)}
        for name in inputs:
            if name not in entries:
                errs.append(f"{where}: unknown input {name!r} (known: {sorted(entries)})")
        for name, t, opts, choices, required in entries.values():
            if name not in inputs:
                if required:
                    errs.append(f"{where}: required input {name!r} is missing")
                continue
            v = inputs[name]
            if _is_link(v):
                src_id, idx = str(v[0]), v[1]
                src = prompt.get(src_id)
                if src is None or not isinstance(src, dict):
                    errs.append(f"{where}: input {name!r} links to missing node {src_id}")
                    continue
                sspec = specs.get(src.get("class_type"))
                if sspec is None:
                    continue  # reported on that node
                outs = sspec["output"]
                if not 0 <= idx < len(outs):
                    errs.append(f"{where}: input {name!r} links to output {idx} of node {src_id} "
                                f"({src['class_type']}), which has {len(outs)} outputs")
                    continue
                if not types_match(outs[idx], t):
                    errs.append(f"{where}: input {name!r} wants {t} but node {src_id} output {idx} is {outs[idx]}")
            else:
                msg = check_value(name, t, opts, choices, v)
                if msg:
                    errs.append(f"{where}: {msg}")
    if not has_output and not errs:
        errs.append("workflow has no output node (SaveImage, PreviewImage or a RewardLoop display node): "
                    "ComfyUI would refuse it")
    return errs


# ------------------------------------------------------------------ UI format
def ui_widget_values(spec: dict, inputs: dict) -> list:
    """``widgets_values`` of a UI node from API inputs (links on widget inputs keep the default)."""
    vals: list = []
    for name, t, opts, choices, _req in input_entries(spec):
        if not is_widget(t, opts):
            continue
        v = inputs.get(name)
        if v is None or _is_link(v):  # the frontend keeps a value even for a linked widget: the type's empty one
            v = opts.get("default", choices[0] if choices else EMPTY_WIDGET_VALUES.get(t))
        vals.append(v)
        if widget_slots(name, t, opts) > 1:
            if t == "INT" and (opts.get("control_after_generate") or name in SEED_NAMES):
                vals.append("fixed")
            if opts.get("image_upload"):
                vals.append("image")
    return vals


def api_from_ui(ui: dict, specs: dict[str, dict]) -> dict:
    """Inverse of :func:`api_to_ui` (enough for validation and round-trip tests): UI workflow → API prompt."""
    links = {lk[0]: lk for lk in ui.get("links", [])}
    prompt = {}
    for node in ui.get("nodes", []):
        if node["type"] in VIRTUAL_NODES:
            continue
        spec = specs.get(node["type"])
        inputs: dict = {}
        if spec is not None:
            wv = list(node.get("widgets_values") or [])
            pos = 0
            for name, t, opts, choices, _req in input_entries(spec):
                if not is_widget(t, opts):
                    continue
                if pos < len(wv):
                    inputs[name] = wv[pos]
                pos += widget_slots(name, t, opts)
        for inp in node.get("inputs", []):
            lid = inp.get("link")
            if lid is not None and lid in links:
                lk = links[lid]
                inputs[inp["name"]] = [str(lk[1]), lk[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def validate_ui(ui: dict, specs: dict[str, dict]) -> list[str]:
    errs: list[str] = []
    if not isinstance(ui, dict) or not isinstance(ui.get("nodes"), list):
        return ["not a UI workflow: no 'nodes' list"]
    nodes = {}
    for node in ui["nodes"]:
        if node.get("id") in nodes:
            errs.append(f"duplicate node id {node.get('id')}")
        nodes[node.get("id")] = node
    links = {}
    for lk in ui.get("links", []) or []:
        if not (isinstance(lk, list) and len(lk) == 6):
            errs.append(f"malformed link {lk!r}: expected [id, from_node, from_slot, to_node, to_slot, type]")
            continue
        lid, a, aslot, b, bslot, ltype = lk
        links[lid] = lk
        na, nb = nodes.get(a), nodes.get(b)
        if na is None or nb is None:
            errs.append(f"link {lid} connects missing node {a if na is None else b}")
            continue
        outs = na.get("outputs", [])
        ins = nb.get("inputs", [])
        if not 0 <= aslot < len(outs):
            errs.append(f"link {lid}: node {a} ({na['type']}) has no output slot {aslot}")
            continue
        if not 0 <= bslot < len(ins):
            errs.append(f"link {lid}: node {b} ({nb['type']}) has no input slot {bslot}")
            continue
        if ins[bslot].get("link") != lid:
            errs.append(f"link {lid}: node {b} input {ins[bslot].get('name')!r} does not point back at it")
        if lid not in (outs[aslot].get("links") or []):
            errs.append(f"link {lid}: node {a} output {aslot} does not list it")
        if not types_match(outs[aslot].get("type", "*"), ins[bslot].get("type", "*")):
            errs.append(f"link {lid}: type {outs[aslot].get('type')} into {ins[bslot].get('type')}")
        if ltype != "*" and not types_match(ltype, outs[aslot].get("type", "*")):
            errs.append(f"link {lid}: declared type {ltype} but output is {outs[aslot].get('type')}")
    for nid, node in nodes.items():
        spec = specs.get(node.get("type"))
        where = f"node {nid} ({node.get('type')})"
        if node.get("type") in VIRTUAL_NODES:
            continue
        if spec is None:
            errs.append(f"{where}: unknown node type {node.get('type')!r} (not a RewardLoop node nor in "
                        "core_nodes.json)")
            continue
        for inp in node.get("inputs", []):
            if inp.get("link") is not None and inp["link"] not in links:
                errs.append(f"{where}: input {inp.get('name')!r} uses missing link {inp['link']}")
        entries = input_entries(spec)
        names = {e[0]: e for e in entries}
        for inp in node.get("inputs", []):
            if inp.get("name") not in names:
                errs.append(f"{where}: unknown input {inp.get('name')!r}")
            elif not types_match(inp.get("type", "*"), names[inp["name"]][1]):
                errs.append(f"{where}: input {inp['name']!r} declared as {inp.get('type')}, node wants "
                            f"{names[inp['name']][1]}")
        if len(node.get("outputs", [])) > len(spec["output"]):
            errs.append(f"{where}: {len(node['outputs'])} outputs but the node has {len(spec['output'])}")
        for i, out in enumerate(node.get("outputs", [])[:len(spec["output"])]):
            if not types_match(out.get("type", "*"), spec["output"][i]):
                errs.append(f"{where}: output {i} declared {out.get('type')}, node gives {spec['output'][i]}")
        widgets = [(n, t, o, c) for n, t, o, c, _r in entries if is_widget(t, o)]
        expect = sum(widget_slots(n, t, o) for n, t, o, _c in widgets)
        wv = node.get("widgets_values")
        if wv is None:
            wv = []
        if isinstance(wv, dict):  # some frontends save widgets by name
            pairs = [(w, wv.get(w[0])) for w in widgets if w[0] in wv]
        else:
            if len(wv) != expect:
                errs.append(f"{where}: {len(wv)} widget values, expected {expect} "
                            f"({', '.join(w[0] for w in widgets)})")
                continue
            pairs, pos = [], 0
            for w in widgets:
                pairs.append((w, wv[pos]))
                pos += widget_slots(w[0], w[1], w[2])
        linked = {i.get("name") for i in node.get("inputs", []) if i.get("link") is not None}
        for (n, t, o, c), v in pairs:
            if n in linked:
                continue
            msg = check_value(n, t, o, c, v)
            if msg:
                errs.append(f"{where}: {msg}")
    return errs


# ------------------------------------------------------------------ API → UI
NODE_W, COL_GAP, ROW_GAP = 320, 80, 40


def _node_height(spec: dict) -> int:
    ent = input_entries(spec)
    n_sock = sum(1 for _n, t, o, _c, _r in ent if not is_widget(t, o))
    n_wid = sum(1 for _n, t, o, _c, _r in ent if is_widget(t, o))
    return 46 + 22 * max(n_sock, len(spec["output"])) + 26 * n_wid + (260 if spec.get("output_node") else 0)


def api_to_ui(prompt: dict, specs: dict[str, dict], layout: list[dict] | None = None) -> dict:
    """API prompt → ComfyUI editor workflow (version 0.4), laid out left to right by graph depth.

    ``layout`` (``api/layout.json``): groups ``[{"title", "nodes": [ids], "note"}]`` placed left to right, each with
    a Note node on top; nodes of no group follow, by depth.
    """
    errs = [e for e in validate_api(prompt, specs) if "no output node" not in e]
    if errs:
        raise ValueError("cannot convert an invalid workflow:\n  " + "\n  ".join(errs))
    # numeric ids (the editor wants integers); keep them when they already are
    ids: dict[str, int] = {}
    used = {int(k) for k in prompt if str(k).isdigit()}
    nxt = max(used, default=0) + 1
    for k in prompt:
        if str(k).isdigit():
            ids[k] = int(k)
        else:
            ids[k] = nxt
            nxt += 1

    def deps(k):
        return [str(v[0]) for v in prompt[k]["inputs"].values() if _is_link(v)]

    depth: dict[str, int] = {}

    def d(k, stack=()):
        if k in depth:
            return depth[k]
        if k in stack:
            raise ValueError(f"workflow has a cycle through node {k}")
        depth[k] = 1 + max((d(s, stack + (k,)) for s in deps(k)), default=-1)
        return depth[k]

    for k in prompt:
        d(k)
    order = sorted(prompt, key=lambda k: (depth[k], ids[k]))
    col_y: dict[int, int] = {}
    nodes, links = {}, []
    for i, k in enumerate(order):
        spec = specs[prompt[k]["class_type"]]
        h = _node_height(spec)
        x = 40 + depth[k] * (NODE_W + COL_GAP)
        y = col_y.get(depth[k], 40)
        col_y[depth[k]] = y + h + ROW_GAP
        node_inputs = []
        for name, t, opts, _c, _r in input_entries(spec):
            v = prompt[k]["inputs"].get(name)
            if not is_widget(t, opts):
                node_inputs.append({"name": name, "type": t, "link": None})
            elif _is_link(v):
                node_inputs.append({"name": name, "type": t, "widget": {"name": name}, "link": None})
        nodes[k] = {
            "id": ids[k], "type": prompt[k]["class_type"], "pos": [x, y], "size": [NODE_W, h], "flags": {},
            "order": i, "mode": 0, "inputs": node_inputs,
            "outputs": [{"name": spec["output_name"][j], "type": t, "links": [], "slot_index": j}
                        for j, t in enumerate(spec["output"])],
            "properties": {"Node name for S&R": prompt[k]["class_type"]},
            "widgets_values": ui_widget_values(spec, prompt[k]["inputs"]),
        }
        if prompt[k].get("_meta", {}).get("title"):
            nodes[k]["title"] = prompt[k]["_meta"]["title"]
    lid = 0
    for k in order:
        for slot, inp in enumerate(nodes[k]["inputs"]):
            v = prompt[k]["inputs"].get(inp["name"])
            if not _is_link(v):
                continue
            src, idx = str(v[0]), v[1]
            lid += 1
            out = nodes[src]["outputs"][idx]
            out["links"].append(lid)
            inp["link"] = lid
            links.append([lid, ids[src], idx, ids[k], slot, out["type"]])
    for n in nodes.values():
        for out in n["outputs"]:
            if not out["links"]:
                out["links"] = None
    groups, notes = _apply_layout(layout or [], nodes, depth, max(ids.values(), default=0))
    all_nodes = [nodes[k] for k in order] + notes
    for i, n in enumerate(all_nodes):
        n["order"] = i
    return {
        "last_node_id": max([n["id"] for n in all_nodes], default=0), "last_link_id": lid,
        "nodes": all_nodes, "links": links, "groups": groups, "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "rewardloop_generated_from": "api"},
        "version": 0.4,
    }


GROUP_GAP, NOTE_CHARS = 120, 52


def _note_height(text: str, width: int) -> int:
    import textwrap
    per_line = max(20, int(NOTE_CHARS * width / NODE_W))
    lines = sum(len(textwrap.wrap(par, per_line)) or 1 for par in text.split("\n"))
    return 40 + 18 * lines


def _apply_layout(layout: list[dict], nodes: dict, depth: dict, last_id: int) -> tuple[list, list]:
    """Move ``nodes`` (id → UI node) into titled groups left to right; returns (groups, Note nodes)."""
    groups, notes = [], []
    x = 40
    placed: set[str] = set()
    top = 80
    for gi, g in enumerate(layout):
        members = [k for k in g["nodes"] if k in nodes]
        if not members:
            raise ValueError(f"layout group {g.get('title')!r} names no node of the workflow")
        cols = sorted({depth[k] for k in members})
        width = len(cols) * (NODE_W + COL_GAP) - COL_GAP
        note_h = _note_height(g.get("note", ""), width) if g.get("note") else 0
        y_start = top + (note_h + ROW_GAP if note_h else 0)
        col_y = {c: y_start for c in cols}
        for k in sorted(members, key=lambda k: (depth[k], int(k) if k.isdigit() else 0)):
            c = depth[k]
            nodes[k]["pos"] = [x + cols.index(c) * (NODE_W + COL_GAP), col_y[c]]
            col_y[c] += nodes[k]["size"][1] + ROW_GAP
            placed.add(k)
        if note_h:
            last_id += 1
            notes.append({"id": last_id, "type": "Note", "pos": [x, top], "size": [width, note_h], "flags": {},
                          "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                          "widgets_values": [g["note"]], "color": "#432", "bgcolor": "#653"})
        bottom = max(col_y.values()) - ROW_GAP
        groups.append({"id": gi + 1, "title": g["title"], "bounding": [x - 20, top - 50, width + 40, bottom - top + 70],
                       "color": "#3f789e", "font_size": 24, "flags": {}})
        x += width + GROUP_GAP
    rest = [k for k in nodes if k not in placed]
    if layout and rest:
        base = min(depth[k] for k in rest)
        col_y: dict[int, int] = {}
        for k in sorted(rest, key=lambda k: (depth[k], int(k) if k.isdigit() else 0)):
            c = depth[k] - base
            nodes[k]["pos"] = [x + c * (NODE_W + COL_GAP), col_y.get(c, top)]
            col_y[c] = col_y.get(c, top) + nodes[k]["size"][1] + ROW_GAP
    return groups, notes


# ------------------------------------------------------------------ files
def api_files(folder: str | Path = API_DIR) -> list[Path]:
    return sorted(Path(folder).glob("*.api.json"))


def ui_files(folder: str | Path = WORKFLOWS_DIR) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.json")
                  if not p.name.endswith(".api.json") and p.name not in NON_WORKFLOW_FILES)


NON_WORKFLOW_FILES = {"tiny_models.json"}


def validate_file(path: str | Path, specs: dict[str, dict]) -> list[str]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"{p.name}: not valid JSON: {e}"]
    errs = validate_api(data, specs) if p.name.endswith(".api.json") else validate_ui(data, specs)
    return [f"{p.name}: {e}" for e in errs]
