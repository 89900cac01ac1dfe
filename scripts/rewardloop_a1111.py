"""RewardLoop for Automatic1111 / Forge: best-of-N by the assembled reward, and auto-fix of flagged regions.

An always-visible accordion in txt2img and img2img. The WebUI loads this file on its own (not as part of a
package), so it first finds the library: the extension folder this file sits in is the ``rewardloop`` package
(A1111 puts the folder on ``sys.path`` only while loading scripts, Forge for the whole session, and the folder
may have any name), imported under the name ``rewardloop`` unless that name already points to this folder. All
logic lives in ``rewardloop.sdwebui``; this file builds the UI and forwards the WebUI's hooks.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import gradio as gr  # provided by the WebUI
from modules import scripts  # provided by the WebUI

PACK_ROOT = Path(__file__).resolve().parents[1]


def _import_pack():
    """This extension folder as the ``rewardloop`` package, whatever the folder is called."""
    mod = sys.modules.get("rewardloop")
    if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve().parent == PACK_ROOT:
        return mod
    if mod is not None:
        print(f"RewardLoop: using the extension folder {PACK_ROOT}, not the 'rewardloop' imported from "
              f"{getattr(mod, '__file__', '?')}", file=sys.stderr)
        for name in [k for k in sys.modules if k == "rewardloop" or k.startswith("rewardloop.")]:
            del sys.modules[name]
    spec = importlib.util.spec_from_file_location("rewardloop", PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rewardloop"] = mod
    spec.loader.exec_module(mod)
    return mod


_import_pack()
logic = importlib.import_module("rewardloop.sdwebui.logic")
host = importlib.import_module("rewardloop.sdwebui.host")
model_choices = importlib.import_module("rewardloop.nodes._common").model_choices


def _add_webui_models_root() -> None:
    """Also look for models under the WebUI's own models folder (``models/blip``, ``models/rich_feedback`` …)."""
    import os
    try:
        from modules import paths
        root = str(paths.models_path)
    except Exception:
        return
    roots = [r for r in os.environ.get("REWARDLOOP_MODELS", "").split(os.pathsep) if r]
    if root not in roots:
        os.environ["REWARDLOOP_MODELS"] = os.pathsep.join(roots + [root])


_add_webui_models_root()


def _infotext_takes_callables() -> bool:
    """Forge and A1111 ≥ 1.9 evaluate callables in ``extra_generation_params`` per image; 1.8 would print them."""
    try:
        from modules import processing
        return "callable(" in inspect.getsource(processing.create_infotext)
    except Exception:
        return False


_FOLDERS = {"captioner": "blip", "text_encoder": "clip", "sam": "sams", "llm": "LLM", "clip": "clip",
            "rich_feedback": "rich_feedback"}


class RewardLoopScript(scripts.Script):
    sorting_priority = 20

    def title(self):
        return "RewardLoop"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        d = logic.ui_defaults()
        c = {}
        with gr.Accordion("RewardLoop: best-of-N and auto-fix", open=False):
            c["enabled"] = gr.Checkbox(label="Enable best-of-N by reward", value=d["enabled"])
            c["rewards"] = gr.CheckboxGroup(label="Rewards", choices=list(logic.REWARDS), value=d["rewards"])
            with gr.Row():
                for r in logic.REWARDS:
                    c[f"w_{r}"] = gr.Slider(label=f"{r} weight", minimum=0.0, maximum=5.0, step=0.1, value=d[f"w_{r}"])
            with gr.Row():
                c["keep_top_k"] = gr.Slider(label="Keep top k of each batch (0 = keep all, best first)", minimum=0,
                                            maximum=16, step=1, value=d["keep_top_k"])
                c["mode"] = gr.Dropdown(label="Ranking", choices=list(logic.MODES), value=d["mode"])
            c["autofix"] = gr.Checkbox(label="Auto-fix flagged regions (img2img inpainting; a fix is kept only "
                                             "when it scores higher)", value=d["autofix"])
            with gr.Row():
                c["threshold"] = gr.Slider(label="flag threshold (heatmap 0..1)", minimum=0.05, maximum=1.0,
                                           step=0.05, value=d["threshold"])
                c["dilation"] = gr.Slider(label="mask dilation (% of short side)", minimum=0.0, maximum=20.0,
                                          step=0.5, value=d["dilation"])
                c["denoise"] = gr.Slider(label="repair denoising strength", minimum=0.05, maximum=1.0, step=0.05,
                                         value=d["denoise"])
            with gr.Row():
                c["fix_reward"] = gr.Dropdown(label="flag and judge fixes with", choices=list(logic.FIX_REWARDS),
                                              value=d["fix_reward"])
                c["fix_candidates"] = gr.Slider(label="fix candidates per image", minimum=1, maximum=16, step=1,
                                                value=d["fix_candidates"])
            with gr.Accordion("Models (catalogue key, name in the models folder, or path)", open=False):
                for key, _reward, role, kind in logic.MODEL_FIELDS:
                    c[key] = gr.Dropdown(label=logic.MODEL_HELP[key], value=d[key], allow_custom_value=True,
                                         choices=list(dict.fromkeys([d[key]] + model_choices(_FOLDERS[role],
                                                                                          (kind,)))))
        comps = [c[name] for name in logic.UI_ORDER]
        # pasting PNG info: a field the info does not name keeps its value (None = "leave it" to the WebUI)
        pasted = lambda name: (lambda params: logic.settings_from_infotext(params).get(name))  # noqa: E731
        self.infotext_fields = [(c[name], pasted(name)) for name in logic.UI_ORDER]
        return comps

    # ------------------------------------------------------------ hooks
    def _settings(self, p, args):
        cached = getattr(p, "_rewardloop_settings", None)
        if cached is not None:
            return cached
        try:
            settings = logic.parse_args(*args)
        except ValueError as e:
            host.report(p, str(e))
            settings = logic.Settings()
        p._rewardloop_settings = settings
        return settings

    def process(self, p, *args):
        settings = self._settings(p, args)
        if not settings.active:
            return
        p.extra_generation_params.update(logic.generation_params(settings))
        if _infotext_takes_callables():
            book = logic.BatchBook.of(p)
            if settings.ranking:
                p.extra_generation_params[logic.INFO_PLACE] = host.per_image_info(book, logic.INFO_PLACE)
            if settings.autofix:
                p.extra_generation_params[logic.INFO_FIX_RESULT] = host.per_image_info(book, logic.INFO_FIX_RESULT)

    def before_process_batch(self, p, *args, **kwargs):
        book = getattr(p, logic.BatchBook.ATTR, None)
        if book is not None:
            book.restore_slots(p)  # img2img's per-slot lists in their own order for the next batch

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        settings = self._settings(p, args)
        if not settings.active or not getattr(pp, "images", None):
            return
        batch_number = int(kwargs.get("batch_number", 0))
        book = logic.BatchBook.of(p)
        if book.failed:  # reported once for the job; the later batches stay as generated too
            book.keep_all(batch_number, getattr(p, "batch_size", 1), len(pp.images))
            return
        try:
            host.run_batch(p, pp, settings, batch_number)
        except InterruptedError:
            book.keep_all(batch_number, getattr(p, "batch_size", 1), len(pp.images))
        except Exception as e:
            book.keep_all(batch_number, getattr(p, "batch_size", 1), len(pp.images))
            book.failed = True
            expected = isinstance(e, (host.FixError, ValueError, FileNotFoundError, ImportError, KeyError))
            what = str(e) if expected else f"{type(e).__name__}: {e}"  # unexpected: the traceback too
            host.report(p, f"images left as generated from batch {batch_number + 1} on: {what}", exc_info=not expected)

    def postprocess(self, p, processed, *args):
        book = getattr(p, logic.BatchBook.ATTR, None)
        if book is not None:
            book.finish(p)  # all_* lists now match the returned images, interrupted runs included
