"""The headless CLI: ``python -m rewardloop <command>``.

Commands live in ``cli/cmd_*.py``; each module defines ``register(subparsers)`` and may define
``SELFTESTS = [(name, function(ctx) -> str), ...]`` that ``selftest`` runs on tiny models.

Every error a user can cause ends as one ``error: …`` line on stderr and exit code 1 (``-v`` shows the
traceback): commands check their arguments, files, model names and output paths before loading a model, and
library code raises :class:`rewardloop.errors.UserError` (or a standard ``ValueError`` / ``OSError``) with a
message that says what to change.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import signal
import sys

from ..errors import UserError, first_line, one_line


def command_modules():
    mods = []
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.startswith("cmd_"):
            mods.append(importlib.import_module(f".{m.name}", __name__))
    return mods


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: one ``error:`` line (naming the command) and exit code 1."""

    def error(self, message):
        self.exit(1, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m rewardloop",
               description="RewardLoop: score, rank, repair and personalize text-to-image results.")
    p.add_argument("-v", "--verbose", action="store_true", help="more logging; show tracebacks of errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for mod in command_modules():
        mod.register(sub)
    return p


def _sigint(signum, frame):  # first Ctrl-C: stop at the next step (training saves a checkpoint)
    from .. import bridge
    bridge.request_interrupt()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _user_error_types() -> tuple[type, ...]:
    """Exceptions that come from the user's input or environment (files, names, values, memory), not from a bug."""
    types: list[type] = [UserError, ValueError, OSError, RuntimeError, KeyError, MemoryError]
    try:
        from PIL import Image
        types.append(Image.DecompressionBombError)
    except Exception:  # pragma: no cover
        pass
    try:
        from safetensors import SafetensorError
        types.append(SafetensorError)
    except Exception:  # pragma: no cover
        pass
    from ..bridge import Interrupted
    types.append(Interrupted)
    return tuple(types)


def describe(exc: BaseException) -> str:
    """The one line printed after ``error:`` for an exception."""
    if isinstance(exc, MemoryError):
        return "out of memory: " + (one_line(first_line(exc)) if str(exc) else "the input is too large") + \
            " (use smaller images or batches)"
    if isinstance(exc, _user_error_types()):
        msg = one_line(first_line(exc) if not isinstance(exc, UserError) else exc)
        if isinstance(exc, FileExistsError):  # library text names the node widget; here it is the flag
            msg = msg.replace("turn on 'overwrite'", "add --overwrite").replace("'overwrite'", "--overwrite")
        return msg
    return (f"unexpected {type(exc).__name__}: {one_line(first_line(exc))} — rerun with -v for the traceback "
            "and report it")


def _progress_safe_logging():
    """Log lines go through tqdm while a progress bar is open, so they never run into it."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
        return logging_redirect_tqdm()
    except ImportError:  # pragma: no cover
        import contextlib
        return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (1, already printed)
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        signal.signal(signal.SIGINT, _sigint)
    except ValueError:  # not in the main thread
        pass
    if not args.verbose and args.command not in ("models", "download", "workflows"):
        from ..weights.loaders import quiet_transformers
        quiet_transformers()  # only our own progress bars (on a terminal) and results
    try:
        with _progress_safe_logging():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.verbose:
            raise
        print(f"error: {describe(e)}", file=sys.stderr)
        return 1
