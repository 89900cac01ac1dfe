"""``workflows``: regenerate the editor (UI) files from the API workflows, validate them, refresh core specs."""
from __future__ import annotations


def register(sub):
    from ..workflows import make_ui
    p = sub.add_parser("workflows", help="convert workflows/api/*.api.json to editor format and validate all "
                                         "workflows (`workflows core-nodes` refreshes tests/data/core_nodes.json)")
    p.add_argument("action", nargs="?", default="ui", choices=["ui", "core-nodes"],
                   help="ui (default): write workflows/<use>.json; core-nodes: regenerate the core node list")
    make_ui.add_arguments(p)
    p.add_argument("--url", help="core-nodes: a running ComfyUI, e.g. http://127.0.0.1:8188")
    p.add_argument("--object-info", help="core-nodes: a saved /object_info JSON file instead of --url")
    p.add_argument("--commit", default="unknown", help="core-nodes: the ComfyUI commit it came from")
    p.set_defaults(func=cmd_workflows)


def cmd_workflows(args) -> int:
    from ..workflows import make_ui
    if args.action == "core-nodes":
        import json
        from pathlib import Path

        from ..workflows import core_nodes
        if args.object_info:
            from ..errors import UserError
            try:
                info = json.loads(Path(args.object_info).read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"--object-info {args.object_info}: not a readable /object_info JSON file "
                                f"({type(e).__name__}: {e}).") from None
            if not isinstance(info, dict):
                raise UserError(f"--object-info {args.object_info}: expected a JSON object of node specs.")
        elif args.url:
            info = core_nodes.fetch_object_info(args.url)
        else:
            raise ValueError("core-nodes needs --url http://127.0.0.1:PORT (a running ComfyUI) or --object-info FILE")
        path = core_nodes.write(info, commit=args.commit, **({"out": args.core_nodes} if args.core_nodes else {}))
        print(f"wrote {path}")
        return 0
    return make_ui.run(args)


def _selftest_workflows(ctx) -> str:
    from ..workflows.graph import all_specs, api_files, ui_files, validate_file
    specs = all_specs()
    files = api_files() + ui_files()
    errs = [e for f in files for e in validate_file(f, specs)]
    if errs:
        raise RuntimeError("; ".join(errs[:5]))
    return f"{len(files)} workflow files valid against {len(specs)} node specs"


SELFTESTS = [("workflows", _selftest_workflows)]
