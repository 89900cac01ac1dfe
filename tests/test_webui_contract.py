"""The extension against the real A1111 1.8.0 and Forge sources (read from ../shared/hosts, never run here).

Reads ``modules/processing.py``, ``modules/scripts.py`` and ``modules/infotext_utils.py`` out of the tarballs into
a temporary folder and checks, by parsing them: every keyword the extension passes to ``StableDiffusionProcessingImg2Img`` is an ``__init__``
field of that WebUI (inherited ones included), the hooks the extension defines are hooks the WebUI calls, and the
WebUI facts the extension relies on (``Processed`` shares ``p.all_*``; which WebUIs evaluate callables in
``extra_generation_params``; the shared condition caches are class attributes; pasting calls functions in
``infotext_fields``).
"""
from __future__ import annotations

import ast
import os
import tarfile
import warnings
from pathlib import Path

import pytest

from rewardloop.sdwebui import host

ROOT = Path(__file__).resolve().parents[1]
HOSTS = {"a1111-1.8.0": "stable-diffusion-webui-v1.8.0.tar.gz", "forge": "stable-diffusion-webui-forge-*.tar.gz"}
FILES = ("modules/processing.py", "modules/scripts.py", "modules/infotext_utils.py")

pytestmark = pytest.mark.realhost


def _hosts_src() -> Path | None:
    for c in (os.environ.get("REWARDLOOP_HOSTS_SRC"), ROOT.parent / "shared" / "hosts",
              ROOT.parent.parent / "shared" / "hosts", "/work/shared/hosts"):  # the places .ci/hosts/common.sh looks
        if c and Path(c).is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="module", params=sorted(HOSTS))
def webui(request, tmp_path_factory):
    src = _hosts_src()
    tars = sorted(src.glob(HOSTS[request.param])) if src else []
    if not tars:
        pytest.skip(f"host sources not found (set REWARDLOOP_HOSTS_SRC to the folder with {HOSTS[request.param]})")
    out = tmp_path_factory.mktemp(request.param)
    with tarfile.open(tars[0]) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.split("/", 1)[-1] in FILES]
        assert len(members) == len(FILES), [m.name for m in members]
        for m in members:
            (out / m.name.split("/", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
            (out / m.name.split("/", 1)[-1]).write_bytes(tf.extractfile(m).read())
    texts = {f: (out / f).read_text() for f in FILES}
    with warnings.catch_warnings():  # the hosts' own invalid escape sequences
        warnings.simplefilter("ignore")
        trees = {f: ast.parse(t) for f, t in texts.items()}
    return request.param, trees, texts


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def dataclass_init_fields(tree: ast.Module, name: str) -> set[str]:
    """``__init__`` fields of a dataclass in the module: annotated class attributes, minus ``field(init=False)``,
    plus those of its base classes defined in the same module."""
    cls = _class(tree, name)
    fields: set[str] = set()
    for base in cls.bases:
        if isinstance(base, ast.Name) and any(isinstance(n, ast.ClassDef) and n.name == base.id for n in tree.body):
            fields |= dataclass_init_fields(tree, base.id)
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            v = node.value
            no_init = isinstance(v, ast.Call) and getattr(v.func, "id", "") == "field" and any(
                k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in v.keywords)
            (fields.discard if no_init else fields.add)(node.target.id)
    return fields


class _P:
    """What the extension reads from the outer job (values of a txt2img job)."""
    sd_model, sampler_name, scheduler, steps, cfg_scale = object(), "Euler a", "Karras", 20, 7.0
    distilled_cfg_scale = 3.5
    eta = s_min_uncond = s_churn = s_tmax = s_tmin = s_noise = None
    tiling, outpath_samples, outpath_grids = False, "out", "grids"


def test_every_img2img_keyword_is_an_init_field(webui):
    from PIL import Image
    name, trees, _ = webui
    accepted = dataclass_init_fields(trees["modules/processing.py"], "StableDiffusionProcessingImg2Img")
    assert "image_mask" not in accepted, "image_mask became an __init__ field: the mask= route may be obsolete"
    assert {"mask", "init_images", "prompt", "sampler_name"} <= accepted
    img = Image.new("RGB", (64, 48))
    kw = host.img2img_kwargs(_P(), img, Image.new("L", (64, 48)), "a cat", "blurry", 7, 2, 0.4, accepted)
    assert set(kw) <= accepted, sorted(set(kw) - accepted)
    assert set(host.IMG2IMG_REQUIRED) <= set(kw)
    assert kw["mask"].size == (64, 48) and kw["init_images"] == [img] and kw["batch_size"] == 2
    assert kw["sampler_name"] == "Euler a" and kw["negative_prompt"] == "blurry" and kw["seed"] == 7
    # the scheduler is its own field in Forge (A1111 >= 1.9); in 1.8.0 it is part of the sampler's name
    assert ("scheduler" in kw) == (name == "forge") == ("scheduler" in accepted)
    if name == "forge":
        assert kw["scheduler"] == "Karras"


def test_a_host_without_mask_gets_one_clear_line():
    with pytest.raises(host.FixError, match="takes no mask"):
        host.img2img_kwargs(_P(), __import__("PIL.Image").Image.new("RGB", (8, 8)), None, "", "", 0, 1, 0.5,
                            set(host.IMG2IMG_REQUIRED) - {"mask"})


def test_the_hooks_we_define_are_hooks_the_webui_calls(webui):
    _, trees, texts = webui
    script = _class(trees["modules/scripts.py"], "Script")
    methods = {n.name for n in script.body if isinstance(n, ast.FunctionDef)}
    ours = {"title", "show", "ui", "process", "before_process_batch", "postprocess_batch_list", "postprocess"}
    assert ours <= methods
    runner = texts["modules/scripts.py"]
    assert "script.postprocess_batch_list(p, pp, *script_args, **kwargs)" in runner
    assert "script.before_process_batch(p, *script_args, **kwargs)" in runner
    proc = texts["modules/processing.py"]
    # the batch number reaches postprocess_batch_list; the next batch is sliced from p.all_* by n * batch_size
    assert "postprocess_batch_list(p, batch_params, batch_number=n)" in proc
    assert "p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]" in proc


def test_webui_facts_the_extension_relies_on(webui):
    name, trees, texts = webui
    proc = texts["modules/processing.py"]
    # Processed keeps the same all_* lists, so BatchBook.finish (the postprocess hook) updates the result too
    assert "self.all_seeds = all_seeds or p.all_seeds" in proc
    # the condition caches are class attributes shared by every job; close() resets them
    base = _class(trees["modules/processing.py"], "StableDiffusionProcessing")
    class_attrs = {t.id for n in base.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert {"cached_c", "cached_uc"} <= class_attrs
    assert "StableDiffusionProcessing.cached_c = [None, None]" in proc
    # params.txt is written by every job's first batch
    assert '"params.txt"' in proc
    # only Forge (A1111 >= 1.9) evaluates callables in extra_generation_params; 1.8.0 would print them
    create = next(n for n in trees["modules/processing.py"].body
                  if isinstance(n, ast.FunctionDef) and n.name == "create_infotext")
    assert ("callable(" in ast.unparse(create)) == (name == "forge")
    # pasting PNG info calls an infotext_fields entry that is a function, and None leaves the field as it is
    paste = texts["modules/infotext_utils.py"]
    assert "if callable(key):" in paste and "v = key(params)" in paste and "if v is None:" in paste
    # A1111's process_images applies token merging and resets it to 0 afterwards (host.outer_job_kept restores it)
    pi = next(n for n in trees["modules/processing.py"].body
              if isinstance(n, ast.FunctionDef) and n.name == "process_images")
    assert ("apply_token_merging(p.sd_model, 0)" in ast.unparse(pi)) == (name == "a1111-1.8.0")
