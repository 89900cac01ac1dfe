"""The Automatic1111 / Forge extension's library side (``scripts/rewardloop_a1111.py`` is only the WebUI glue).

* :mod:`.logic` — settings from the UI, scoring, ranking, keeping the WebUI's per-image lists in step, masks;
  no WebUI import.
* :mod:`.host` — what touches the WebUI's objects: the nested img2img job of auto-fix (built from the real
  dataclass's fields, run without disturbing the outer job), image conversion, visible error reports.

Nothing here is imported by the ComfyUI entry point. Not called ``webui``: Forge keeps extension folders on
``sys.path``, where a top-level ``webui`` would shadow the WebUI's own ``webui.py``.
"""
