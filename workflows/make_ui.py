"""Convert every ``workflows/api/<use>.api.json`` into the ComfyUI editor format ``workflows/<use>.json``.

    python -m rewardloop workflows                 # regenerate all UI files, then validate everything
    python -m rewardloop.workflows.make_ui --check # only report UI files that are stale or invalid

Widget values follow each node's INPUT_TYPES order (ours from NODE_CLASS_MAPPINGS, core ones from
``tests/data/core_nodes.json``); nodes are placed in the titled groups of ``api/layout.json`` (each with a Note
that says what to set), left to right. Only UI files sit in ``workflows/``: ComfyUI's template browser lists every
JSON there, with ``<use>.jpg`` as the thumbnail (a screenshot taken by the frontend test in a real ComfyUI).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .graph import WORKFLOWS_DIR, all_specs, api_files, api_to_ui, ui_files, validate_file

LAYOUT_NAME = "layout.json"


def ui_path(api_path: Path) -> Path:
    """``<folder>/api/<use>.api.json`` → ``<folder>/<use>.json``."""
    return api_path.parent.parent / (api_path.name[:-len(".api.json")] + ".json")


def load_layouts(api_dir: Path) -> dict:
    p = Path(api_dir) / LAYOUT_NAME
    return {k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("_")} if p.is_file() else {}


def render(api_path: Path, specs: dict, layout: list | None = None) -> str:
    prompt = json.loads(Path(api_path).read_text())
    return json.dumps(api_to_ui(prompt, specs, layout), indent=1) + "\n"


def convert_all(folder: str | Path = WORKFLOWS_DIR, check: bool = False, core_path=None, out=print) -> int:
    """Write (or with ``check`` compare) every UI file; validate all workflow files. Returns the problem count."""
    from ..fileio import atomic_write_text
    folder = Path(folder)
    api_dir = folder / "api"
    specs = all_specs(core_path)
    layouts = load_layouts(api_dir)
    problems = 0
    for api in api_files(api_dir):
        errs = validate_file(api, specs)
        if errs:
            problems += len(errs)
            for e in errs:
                out(f"INVALID {e}")
            continue
        text = render(api, specs, layouts.get(api.name[:-len(".api.json")]))
        target = ui_path(api)
        if check:
            if not target.is_file() or target.read_text() != text:
                problems += 1
                out(f"STALE   {target.name}: regenerate with `python -m rewardloop workflows`")
            else:
                out(f"ok      {api.name}: valid; {target.name} up to date")
            continue
        if not target.is_file() or target.read_text() != text:
            atomic_write_text(target, text)
            out(f"wrote   {target.name}")
        else:
            out(f"same    {target.name}")
    uis = ui_files(folder)
    for ui in uis:
        errs = validate_file(ui, specs)
        for e in errs:
            problems += 1
            out(f"INVALID {e}")
        if check and not errs:
            out(f"ok      {ui.name}: valid")
    if not api_files(api_dir):
        out(f"no *.api.json workflows in {api_dir}")
    ours = sum(1 for k in specs if k in _our_ids())
    out(f"checked {len(api_files(api_dir))} API and {len(uis)} editor workflow(s) in {folder} against {len(specs)} "
        f"node specs ({ours} RewardLoop, {len(specs) - ours} core): {problems} problem(s)")
    return problems


def _our_ids() -> set[str]:
    from ..nodes import NODE_CLASS_MAPPINGS
    return set(NODE_CLASS_MAPPINGS)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--folder", default=str(WORKFLOWS_DIR), help="workflows folder (default: the pack's); API "
                                                                  "sources are in its api/ sub-folder")
    ap.add_argument("--check", action="store_true", help="write nothing; fail when a UI file is stale/invalid")
    ap.add_argument("--core-nodes", default=None, help="core node specs (default: tests/data/core_nodes.json)")


def run(args) -> int:
    from ..errors import UserError
    if not Path(args.folder).is_dir():
        raise UserError(f"--folder {args.folder} is not a folder of workflows.")
    if args.core_nodes and not Path(args.core_nodes).is_file():
        raise UserError(f"--core-nodes {args.core_nodes} does not exist: give a core_nodes.json file.")
    n = convert_all(args.folder, check=args.check, core_path=args.core_nodes)
    if n:
        print(f"error: {n} problem(s) in the workflows above: fix the INVALID ones, regenerate STALE ones with "
              "`python -m rewardloop workflows`", file=sys.stderr)
    return 1 if n else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rewardloop.workflows.make_ui", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
