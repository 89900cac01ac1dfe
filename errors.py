"""Errors a user can cause, and how they are shown: one line that says what to change.

Library code raises :class:`UserError` (a ``ValueError``, so existing ``except ValueError`` paths and ComfyUI's
node error box keep working) for bad input: unreadable files, bad names, out-of-range values, corrupt model
files. The CLI prints any such error as ``error: …`` (one line) and exits 1; ``-v`` shows the traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message is one line that says what to change."""


def one_line(text: object, limit: int = 600) -> str:
    """Collapse a message to one line (no newlines, repeated blanks) of at most ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 1] + "…"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    for line in str(msg).splitlines():
        if line.strip():
            return line.strip().rstrip(".")
    return type(exc).__name__
