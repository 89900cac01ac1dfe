"""``selftest``: build tiny models in a temporary folder and run every registered capability end to end."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SelftestContext:
    root: Path
    built: dict = field(default_factory=dict)

    @property
    def models_root(self) -> Path:
        return self.root / "models"

    def model(self, key: str) -> str:
        """Build the tiny model ``key`` (once) and return the key, resolvable through the registry."""
        from ..weights import tiny
        if key not in self.built:
            self.built[key] = tiny.build(key, self.models_root)
        return key

    def path(self, key: str) -> Path:
        self.model(key)
        return self.built[key]


def register(sub):
    p = sub.add_parser("selftest", help="run every capability on tiny random models (no downloads)")
    p.add_argument("--only", action="append", help="run only checks whose name contains this (repeatable)")
    p.add_argument("--keep", metavar="DIR", help="build the tiny models in DIR and keep them")
    p.set_defaults(func=cmd_selftest)


def all_checks():
    from . import command_modules
    checks = []
    for mod in command_modules():
        checks += list(getattr(mod, "SELFTESTS", []))
    return checks


def run_checks(ctx: SelftestContext, only=None) -> list[tuple[str, bool, float, str]]:
    results = []
    for name, fn in all_checks():
        if only and not any(o in name for o in only):
            continue
        t0 = time.perf_counter()
        try:
            detail = fn(ctx) or ""
            ok = True
        except Exception as e:  # report and continue: the table shows every capability
            ok = False
            detail = f"{type(e).__name__}: {e}"
            if os.environ.get("REWARDLOOP_SELFTEST_TRACE"):
                traceback.print_exc()
        results.append((name, ok, time.perf_counter() - t0, str(detail).splitlines()[0] if detail else ""))
    return results


def cmd_selftest(args) -> int:
    from ..errors import UserError
    from ..weights.loaders import quiet_transformers
    from ._checks import check_out_dir
    names = [n for n, _ in all_checks()]
    for o in args.only or []:
        if not any(o in n for n in names):
            raise UserError(f"--only {o!r} matches no check; the checks are: {'; '.join(names)}.")
    if args.keep:
        check_out_dir(args.keep, overwrite=True, flag="--keep")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    quiet_transformers()  # no library progress bars between the table's lines
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rewardloop-selftest-"))
    ctx = SelftestContext(root)
    old = os.environ.get("REWARDLOOP_MODELS")
    os.environ["REWARDLOOP_MODELS"] = os.pathsep.join([str(ctx.models_root)] + ([old] if old else []))
    try:
        results = run_checks(ctx, args.only)
    finally:
        if old is None:
            os.environ.pop("REWARDLOOP_MODELS", None)
        else:
            os.environ["REWARDLOOP_MODELS"] = old
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    w = max([len(r[0]) for r in results] + [5])
    print(f"{'check'.ljust(w)}  result  seconds  detail")
    for name, ok, secs, detail in results:
        print(f"{name.ljust(w)}  {'pass' if ok else 'FAIL'}    {secs:7.2f}  {detail}")
    failed = sum(not r[1] for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


# ---------------------------------------------------------------- the foundation's own checks
def _check_registry(ctx: SelftestContext) -> str:
    from ..weights.catalogue import CATALOGUE
    from ..weights.registry import resolve
    found = []
    for s in CATALOGUE:
        if s.source == "tiny":
            ctx.model(s.key)
            r = resolve(s.key)
            assert r.path.exists(), r
            found.append(s.key)
    return f"{len(found)} tiny models resolved"


def _check_loaders(ctx: SelftestContext) -> str:
    import torch

    from ..weights.cache import MODEL_CACHE
    from ..weights.catalogue import CATALOGUE
    from ..weights.loaders import LOADERS
    n = 0
    for s in CATALOGUE:
        if s.source == "tiny":
            h = LOADERS[s.kind](ctx.model(s.key), device="cpu")
            assert h.model is not None
            n += 1
    hits = MODEL_CACHE.stats.hits
    LOADERS["llm"]("tiny-llm", device="cpu")
    assert MODEL_CACHE.stats.hits == hits + 1, "second load was not a cache hit"
    h = LOADERS["sam"]("tiny-sam", device="cpu")
    with torch.no_grad():
        emb = h.model.image_encoder(torch.zeros(1, 3, 256, 256))
    return f"{n} kinds loaded, cache hit on reload, SAM embedding {tuple(emb.shape)}"


SELFTESTS = [("registry: tiny models resolve", _check_registry),
             ("loaders: every kind loads + cache", _check_loaders)]
