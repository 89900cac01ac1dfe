"""``models`` (what is found where) and ``download`` (fetch weights on request)."""
from __future__ import annotations

from ..weights import registry
from ..weights.catalogue import PROFILES, get_spec


def register(sub):
    p = sub.add_parser("models", help="list known models and where each was found")
    p.add_argument("--all", action="store_true", help="also list the tiny test models")
    p.set_defaults(func=cmd_models)
    d = sub.add_parser("download", help="download models (by key or --profile) through huggingface_hub")
    d.add_argument("keys", nargs="*", help="catalogue keys (see `models`)")
    d.add_argument("--profile", choices=sorted(PROFILES), help="a named set of models")
    d.add_argument("--root", help="models root to download into (default: ComfyUI's models dir, "
                                  "REWARDLOOP_MODELS, or the pack's weights/models)")
    d.set_defaults(func=cmd_download)


def cmd_models(args) -> int:
    rows = []
    for spec, res in registry.status():
        if spec.source == "tiny" and not args.all:
            continue
        where = f"{res.where}: {res.path}" if res else "missing"
        rows.append((spec.key, spec.kind, f"models/{spec.folder}", f"{spec.size_mb} MB" if spec.size_mb else "-",
                     spec.license or "-", where))
    heads = ("key", "kind", "folder", "size", "licence", "found")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0


def cmd_download(args) -> int:
    from ..errors import UserError
    from ._checks import check_out_dir
    keys = list(args.keys)
    if args.profile:
        from ..weights.catalogue import specs_for_profile
        keys += [s.key for s in specs_for_profile(args.profile)]
    if not keys:
        raise UserError("Name models to download (see `python -m rewardloop models`) or pass --profile "
                        f"({', '.join(PROFILES)}).")
    keys = list(dict.fromkeys(keys))
    for k in keys:  # every name is checked before anything is fetched
        spec = get_spec(k)
        if spec.source in ("tiny", "manual"):
            raise UserError(f"{k} cannot be downloaded: {registry.fetch_command(spec)}")
    if args.root:
        check_out_dir(args.root, overwrite=True, flag="--root")
    for k in keys:
        path = registry.download(k, args.root)
        print(f"{k}: {path}")
    return 0
