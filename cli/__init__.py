"""The headless CLI: ``python -m rewardloop <command>``.

Commands live in ``cli/cmd_*.py``; each module defines ``register(subparsers)`` and may define
``SELFTESTS = [(name, function(ctx) -> str), ...]`` that ``selftest`` runs on tiny models.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import signal
import sys


def command_modules():
    mods = []
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.startswith("cmd_"):
            mods.append(importlib.import_module(f".{m.name}", __name__))
    return mods


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rewardloop",
                                description="RewardLoop: score, rank, repair and personalize text-to-image results.")
    p.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules():
        mod.register(sub)
    return p


def _sigint(signum, frame):  # first Ctrl-C: stop at the next step (training saves a checkpoint)
    from .. import bridge
    bridge.request_interrupt()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        signal.signal(signal.SIGINT, _sigint)
    except ValueError:  # not in the main thread
        pass
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, KeyError) as e:
        if args.verbose:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 1
