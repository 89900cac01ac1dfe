"""JSON over HTTP to a host running on the loopback interface (real-host tests)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request


def get_json(url: str, timeout: float = 60):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return json.loads(r.read().decode())


def post_json(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    """``(HTTP status, answer)``; an error answer that is not JSON comes back as ``{"error": text}``."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            return r.status, json.loads(r.read().decode() or "{}")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text or "{}")
        except json.JSONDecodeError:
            return e.code, {"error": text}
