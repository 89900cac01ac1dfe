"""Prompt lists for training: plain text files (one prompt a line) and MS-COCO captions JSON.

``read_prompts(path)`` picks the format from the content (a ``.json`` file or text starting with ``{``/``[``
is JSON), strips whitespace, skips blank lines and ``#`` comments, and removes duplicates keeping the first
occurrence (case and spacing preserved, compared after collapsing whitespace).
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message says what to change."""


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def dedupe(prompts) -> list[str]:
    seen, out = set(), []
    for p in prompts:
        p = _clean(p)
        if p and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def parse_prompt_text(text: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped; duplicates removed."""
    return dedupe(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def parse_coco_json(data, source: str = "JSON") -> list[str]:
    """MS-COCO captions (``{"annotations": [{"caption": ...}, ...]}``), or a plain JSON list of strings."""
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        if "annotations" not in data:
            raise PromptFileError(
                f"{source}: a JSON prompt file must be MS-COCO captions ({{\"annotations\": [{{\"caption\": ...}}]}}) "
                f"or a list of strings; found keys {sorted(data)[:6]}.")
        items = data["annotations"]
        if not isinstance(items, list):
            raise PromptFileError(f"{source}: \"annotations\" must be a list of {{\"caption\": ...}} objects.")
    else:
        raise PromptFileError(f"{source}: expected a JSON object or list, got {type(data).__name__}.")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("caption"), str):
            out.append(item["caption"])
        else:
            raise PromptFileError(f"{source}: entry {i} has no text caption (expected {{\"caption\": \"...\"}}).")
    return dedupe(out)


def read_prompts(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Prompts from a text file or an MS-COCO captions JSON file (deduplicated, in file order)."""
    p = Path(path)
    if not p.is_file():
        raise PromptFileError(f"Prompt file {p} does not exist: pass a .txt file (one prompt a line) "
                              "or an MS-COCO captions .json file.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"Prompt file {p} is not UTF-8 text ({e.reason}): save it as UTF-8.") from None
    stripped = text.lstrip()
    if not stripped:
        prompts = []
    elif p.suffix.lower() == ".json" or stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"Prompt file {p} is not valid JSON (line {e.lineno}: {e.msg}).") from None
        prompts = parse_coco_json(data, source=str(p))
    else:
        prompts = parse_prompt_text(text)
    if not prompts:
        raise PromptFileError(f"Prompt file {p} has no prompts: write one prompt per line "
                              "(blank lines and lines starting with # are skipped).")
    if limit is not None:
        if limit < 1:
            raise PromptFileError(f"The prompt limit must be at least 1, got {limit}.")
        prompts = prompts[:limit]
    return prompts
