"""Automatic1111 / Forge extension glue (``scripts.Script`` subclasses)."""
