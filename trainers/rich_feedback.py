"""Train RAHF on RichHF-18K (or any data in its TFRecord format), ``accelerate launch``-compatible.

Data: RichHF-18K ``tf.train.Example`` TFRecords (read by :mod:`.tfrecord`, no TensorFlow) with ``filename``,
``artifact_score`` (→ plausibility), ``misalignment_score`` (→ alignment), ``aesthetics_score``,
``overall_score``, ``artifact_map`` (→ implausibility heatmap), ``misalignment_map`` (PNG, 0..255) and
``prompt_misalignment_label`` (space-separated 0/1 per prompt word, 0 = misaligned). Images are Pick-a-Pic v1
images by uid (``uid = filename.split('/')[-1].split('.')[0]``), found in a local folder
(``<uid>.png|.jpg|.jpeg|.webp``) or in Pick-a-Pic parquet shards (``image_0_uid``/``jpg_0``,
``image_1_uid``/``jpg_1``, ``caption``; needs ``pyarrow``). The prompt (Pick-a-Pic ``caption``) comes from the
record itself when it has a ``caption``/``prompt`` feature, else from the parquet row, else from
``<uid>.txt`` or a ``prompts.json`` (``{uid: prompt}``) in the image folder.

Targets: scores as given (0..1); heatmaps /255 resized to the model's image size; the sequence target is the
cleaned prompt with ``_0`` on each word labelled 0 (labels aligned to the RichHF word split).
Loss = w_seq·CE(T5 decoder, teacher forcing) + w_score·Σ MSE(score) + w_heatmap·Σ MSE(heatmap).

Training: AdamW, cosine schedule to ``min_lr`` (after an optional linear warm-up), gradient accumulation and
mixed precision through ``accelerate.Accelerator``; checkpoints ``<out>/checkpoints/step-NNNNNNNN/`` hold a
loadable model folder plus optimizer / scheduler / RNG state and the step, written atomically; ``resume``
continues from the latest one with the same data order (per-epoch permutations from the seed), so an
interrupted run ends with the same weights as an uninterrupted one (up to non-deterministic GPU kernels).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..rewards.rich_feedback import HEATMAP_TYPES, SCORE_TYPES
from ..rewards.rich_feedback.words import align_labels, clean_prompt, prompt_words, tagged_target
from .tfrecord import TFRecordError, parse_example, read_records

log = logging.getLogger("rewardloop")

SCORE_FIELDS = {"plausibility": "artifact_score", "alignment": "misalignment_score",
                "aesthetics": "aesthetics_score", "overall": "overall_score"}
HEATMAP_FIELDS = {"implausibility": "artifact_map", "misalignment": "misalignment_map"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_MAP_PIXELS = 4096 * 4096        # RichHF heatmaps are 512 x 512; a larger "heatmap" is refused unread


# ---------------------------------------------------------------- records
@dataclass
class RichHFRecord:
    uid: str
    scores: dict[str, float]
    maps: dict[str, bytes]                 # encoded PNG/JPEG (may be empty → all-zero map)
    labels: list[int]
    prompt: str | None = None


def uid_of(filename: str) -> str:
    return filename.replace("\\", "/").split("/")[-1].split(".")[0]


def _first(ex: dict, key: str, default=None):
    v = ex.get(key)
    return v[0] if v else default


class BadRecordError(ValueError):
    """A RichHF record that cannot be trained or evaluated on (missing or non-finite scores, bad heatmap, ...)."""


def tfrecord_files(paths: str | os.PathLike | Sequence) -> list[Path]:
    """The TFRecord files named (folders: their ``*.tfrecord``); one line for a missing one."""
    files: list[Path] = []
    for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths):
        p = Path(p)
        if p.is_dir():
            files += sorted(x for x in p.iterdir() if x.suffix == ".tfrecord" or ".tfrecord" in x.name)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"TFRecord {p} does not exist: give the RichHF-18K train/dev/test .tfrecord "
                                    "files (github.com/google-research-datasets/richhf-18k, Git LFS).")
    return files


def read_richhf(paths: str | os.PathLike | Sequence, verify: bool = True, skip_bad: bool = False,
                skipped: list[str] | None = None) -> list[RichHFRecord]:
    """All examples of one or more RichHF TFRecord files (or folders of ``*.tfrecord``), each checked.

    A record needs a ``filename``, the four scores as finite numbers, 0/1 labels and readable heatmaps (or none).
    A bad record stops the read with one line naming its file, index and uid, unless ``skip_bad``: then it is
    left out and described in ``skipped``. A damaged file (framing, checksums, lengths) always stops the read.
    """
    files = tfrecord_files(paths)
    out = []
    for f in files:
        for i, data in enumerate(read_records(f, verify)):
            try:
                out.append(_record(parse_example(data)))
            except (TFRecordError, ValueError) as e:       # (UnicodeDecodeError is a ValueError)
                msg = f"{f.name} record {i}, {e}" if str(e).startswith("uid ") else f"{f.name} record {i}: {e}"
                if not skip_bad:
                    raise BadRecordError(f"{msg} Fix the data, or leave such records out with --skip-bad-records "
                                         "(skip_bad).") from None
                if skipped is not None:
                    skipped.append(msg)
                log.warning("skipping %s", msg)
    if not out:
        raise ValueError(f"No usable examples in {', '.join(map(str, files))}.")
    return out


def _record(ex: dict) -> RichHFRecord:
    fn = _first(ex, "filename")
    if not isinstance(fn, (bytes, str)):
        raise TFRecordError("no 'filename' feature: not a RichHF-18K record.")
    fn = fn.decode("utf-8") if isinstance(fn, bytes) else fn
    uid = uid_of(fn)
    scores = {}
    for k, f in SCORE_FIELDS.items():
        v = _first(ex, f)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TFRecordError(f"uid {uid}: no {f} number.")
        if not math.isfinite(float(v)):
            raise TFRecordError(f"uid {uid}: {f} = {float(v)}, not a finite number.")
        scores[k] = float(v)
    maps = {}
    for k, f in HEATMAP_FIELDS.items():
        b = _first(ex, f, b"") or b""
        if not isinstance(b, bytes):
            raise TFRecordError(f"uid {uid}: its {f} is not image bytes.")
        if b:
            try:
                with Image.open(io.BytesIO(b)) as im:
                    if im.width * im.height > MAX_MAP_PIXELS:
                        raise ValueError(f"{im.width}x{im.height} pixels")
                    im.verify()
            except Exception as e:       # PIL raises many kinds (OSError, SyntaxError, DecompressionBombError …)
                raise TFRecordError(f"uid {uid}: its {f} is not a readable image ({type(e).__name__}).") \
                    from None
        maps[k] = bytes(b)
    lab = _first(ex, "prompt_misalignment_label", b"")
    lab = lab.decode("utf-8") if isinstance(lab, bytes) else str(lab)
    if any(t not in ("0", "1") for t in lab.split()):
        raise TFRecordError(f"uid {uid}: prompt_misalignment_label {lab[:40]!r}, expected 0/1 per word.")
    prompt = _first(ex, "caption") or _first(ex, "prompt")
    return RichHFRecord(uid=uid, scores=scores, maps=maps, labels=[int(t) for t in lab.split()],
                        prompt=prompt.decode("utf-8") if isinstance(prompt, bytes) else prompt)


def decode_map(data: bytes, size: int) -> torch.Tensor:
    """Encoded heatmap → ``[size, size]`` float in 0..1 (empty bytes → zeros)."""
    if not data:
        return torch.zeros(size, size)
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    if t.shape != (size, size):
        t = torch.nn.functional.interpolate(t[None, None], size=(size, size), mode="bilinear",
                                            align_corners=False)[0, 0]
    return t.clamp(0, 1)


# ---------------------------------------------------------------- images + prompts
class ImageSource:
    """Pick-a-Pic images (and prompts) by uid from a folder and/or parquet shards."""

    def __init__(self, folder: str | os.PathLike | None = None, parquet: Sequence[str] = (),
                 uids: set[str] | None = None):
        self.folder = Path(folder) if folder else None
        if self.folder is not None and not self.folder.is_dir():
            raise FileNotFoundError(f"Image folder {self.folder} does not exist.")
        self.prompts: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}
        if self.folder is not None:
            pj = self.folder / "prompts.json"
            if pj.is_file():
                self.prompts.update({str(k): str(v) for k, v in json.loads(pj.read_text()).items()})
        if parquet:
            self._index_parquet(parquet, uids)

    def _index_parquet(self, files: Sequence[str], uids: set[str] | None) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise RuntimeError("Reading Pick-a-Pic parquet shards needs pyarrow: pip install pyarrow "
                               "(or export the images to a folder as <uid>.png / <uid>.jpg).") from e
        for f in files:
            wanted = ["image_0_uid", "image_1_uid", "jpg_0", "jpg_1", "caption"]
            names = set(pq.ParquetFile(f).schema_arrow.names)
            table = pq.read_table(f, columns=[c for c in wanted if c in names])   # only what we use
            cols = set(table.column_names)
            for side in ("0", "1"):
                uc, jc = f"image_{side}_uid", f"jpg_{side}"
                if uc not in cols or jc not in cols:
                    continue
                us = table.column(uc).to_pylist()
                caps = table.column("caption").to_pylist() if "caption" in cols else [None] * len(us)
                for row, uid in enumerate(us):
                    if uids is not None and uid not in uids:
                        continue
                    self.blobs[uid] = table.column(jc)[row].as_py()
                    if caps[row]:
                        self.prompts.setdefault(uid, caps[row])

    def image(self, uid: str) -> Image.Image:
        try:
            if uid in self.blobs:
                with Image.open(io.BytesIO(self.blobs[uid])) as im:
                    return im.convert("RGB")
            if self.folder is not None:
                for s in IMAGE_SUFFIXES:
                    p = self.folder / f"{uid}{s}"
                    if p.is_file():
                        with Image.open(p) as im:
                            return im.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"The image of uid {uid} cannot be read ({type(e).__name__}: {e}): replace it or "
                             "remove its record.") from None
        raise FileNotFoundError(f"No image for uid {uid}: put {uid}.png/.jpg into the image folder or give the "
                                "Pick-a-Pic v1 parquet shards that contain it.")

    def prompt(self, uid: str) -> str | None:
        if uid in self.prompts:
            return self.prompts[uid]
        if self.folder is not None and (self.folder / f"{uid}.txt").is_file():
            return (self.folder / f"{uid}.txt").read_text(encoding="utf-8").strip()
        return None


class RichHFDataset(torch.utils.data.Dataset):
    """Items: normalised image tensor, cleaned prompt, tagged target, scores [4], heatmaps [2,S,S]."""

    def __init__(self, records: list[RichHFRecord], images: ImageSource, config, skip_missing: bool = False):
        from ..rewards.rich_feedback.predict import preprocess_images
        self._pre = preprocess_images
        self.config = config
        self.images = images
        keep, self.skipped = [], []
        for r in records:
            prompt = r.prompt or images.prompt(r.uid)
            if prompt is None:
                if skip_missing:
                    self.skipped.append(r.uid)
                    continue
                raise ValueError(f"No prompt for uid {r.uid}: the record has no caption; give the Pick-a-Pic "
                                 "parquet shards, <uid>.txt files or prompts.json in the image folder.")
            r.prompt = prompt
            keep.append(r)
        self.records = keep
        self.n_label_mismatch = sum(len(prompt_words(r.prompt)) != len(r.labels) for r in keep)
        if self.n_label_mismatch:
            log.warning("%d prompts have a word count different from their label count (labels truncated / "
                        "padded with 'aligned').", self.n_label_mismatch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        s = self.config.image_size
        words = prompt_words(r.prompt)
        return {
            "pixel_values": self._pre([self.images.image(r.uid)], self.config)[0],
            "prompt": clean_prompt(r.prompt),
            "target": tagged_target(words, align_labels(words, r.labels)),
            "scores": torch.tensor([r.scores[k] for k in SCORE_TYPES], dtype=torch.float32),
            "heatmaps": torch.stack([decode_map(r.maps[k], s) for k in HEATMAP_TYPES]),
            "uid": r.uid,
        }


def make_collate(model_config, tokenizer, augmented_texts: Callable | None = None):
    max_len = model_config.max_text_tokens

    def tok(texts):
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return enc.input_ids, enc.attention_mask

    def collate(items: list[dict]) -> dict:
        ids, mask = tok([it["prompt"] for it in items])
        lab, lmask = tok([it["target"] for it in items])
        lab = lab.masked_fill(lmask == 0, -100)
        batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "input_ids": ids,
                 "attention_mask": mask, "labels": lab, "scores": torch.stack([it["scores"] for it in items]),
                 "heatmaps": torch.stack([it["heatmaps"] for it in items]),
                 "targets": [it["target"] for it in items], "uids": [it["uid"] for it in items]}
        if augmented_texts is not None:
            batch["task_inputs"] = {n: tok(t) for n, t in augmented_texts([it["prompt"] for it in items]).items()}
        return batch

    return collate


class EpochBatches(torch.utils.data.Sampler):
    """Micro-batches of indices: a fresh seeded permutation per epoch; starts at micro-batch ``start``.

    With several processes, micro-batch ``m`` of process ``r`` takes slots ``(m*world + r)`` of the epoch, so
    the global data order does not depend on the number of processes beyond the batch layout.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, total: int | None = None,
                 rank: int = 0, world: int = 1, shuffle: bool = True):
        if n < batch_size * world:
            raise ValueError(f"The dataset has {n} examples, fewer than one batch ({batch_size} × {world} "
                             "processes): lower the batch size.")
        self.n, self.bs, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.per_epoch = n // (batch_size * world)     # drop the incomplete tail batch

    def _perm(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        m = self.start
        perm_epoch, perm = -1, []
        while self.total is None or m < self.total:
            epoch, k = divmod(m, self.per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = self._perm(epoch), epoch
            slot = (k * self.world + self.rank) * self.bs
            yield perm[slot:slot + self.bs]
            m += 1

    def __len__(self) -> int:
        return (self.total - self.start) if self.total is not None else 10 ** 12


# ---------------------------------------------------------------- training
@dataclass
class TrainConfig:
    train: list[str]
    out: str
    images: str | None = None
    parquet: list[str] = field(default_factory=list)
    init: str | None = None           # a RAHF model folder / key to start from
    vit: str | None = None            # or: a ViT folder + a T5 folder (new heads)
    t5: str | None = None
    multi_head: bool = True
    steps: int = 1000                 # optimizer steps
    batch_size: int = 8               # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 2e-5
    min_lr: float = 1e-5
    weight_decay: float = 2e-3
    warmup: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"       # no | fp16 | bf16
    w_seq: float = 1.0
    w_score: float = 1.0
    w_heatmap: float = 1.0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    resume: str = "auto"              # auto | none | path of a checkpoint folder
    num_workers: int = 0
    skip_missing: bool = False
    verify_crc: bool = True
    cpu: bool = False
    skip_bad: bool = False            # leave out records without the four finite scores etc. (default: refuse)
    overwrite: bool = False           # start afresh in ``out`` (its checkpoints and model are removed)

    def validate(self) -> None:
        """Every setting and file, before any model is loaded (one line per problem)."""
        for k in ("steps", "batch_size", "grad_accum", "keep_checkpoints"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be at least 1 (got {getattr(self, k)}).")
        for k in ("warmup", "save_every", "log_every", "num_workers", "seed"):
            if int(getattr(self, k)) < 0:
                raise ValueError(f"{k} must be >= 0 (got {getattr(self, k)}).")
        for k in ("lr", "min_lr", "weight_decay", "max_grad_norm", "w_seq", "w_score", "w_heatmap"):
            v = float(getattr(self, k))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{k} must be a finite number >= 0 (got {v}).")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0 (got {self.lr}).")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}.")
        if self.mixed_precision == "fp16" and (self.cpu or not torch.cuda.is_available()):
            raise ValueError("fp16 mixed precision needs a GPU: use --mixed-precision bf16 or no on the CPU.")
        if not self.train:
            raise ValueError("No training data: give --train a RichHF .tfrecord file or folder.")
        tfrecord_files(self.train)
        if self.images and not Path(self.images).is_dir():
            raise FileNotFoundError(f"Image folder {self.images} does not exist.")
        for f in self.parquet:
            if not Path(f).is_file():
                raise FileNotFoundError(f"Parquet shard {f} does not exist.")
        if self.resume not in ("auto", "none", "", None) and not (Path(self.resume) / "state.pt").is_file():
            raise FileNotFoundError(f"{self.resume} is not a checkpoint (no state.pt): give a checkpoints/step-N "
                                    "folder, auto or none.")
        from ..weights.registry import resolve
        if self.init:
            resolve(self.init, folder="rich_feedback")
        elif self.vit and self.t5:
            for what, name in (("--vit", self.vit), ("--t5", self.t5)):
                if not Path(name).expanduser().is_dir():
                    resolve(name, folder="rich_feedback")
        else:
            raise ValueError("Say what to train: --init a RAHF model folder, or --vit and --t5 pretrained folders "
                             "(e.g. google/vit-large-patch16-384 and t5-base).")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file: give a folder for the run.")

    def settings(self) -> dict:
        """What a resumed run must share (everything but output and machine options)."""
        data = [{"file": str(Path(f).resolve()), "bytes": Path(f).stat().st_size} for f in tfrecord_files(self.train)]
        skip = ("out", "resume", "num_workers", "save_every", "keep_checkpoints", "log_every", "verify_crc", "cpu",
                "mixed_precision", "overwrite", "train")
        return {"data": data, **{k: v for k, v in dataclasses.asdict(self).items() if k not in skip}}


RUN_ENTRIES = ("run.json", "checkpoints", "model")


def _checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if re.fullmatch(r"step-\d{8}", p.name) and (p / "state.pt").is_file()),
                  key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    found = _checkpoints(Path(out))
    return found[-1] if found else None


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                    float(cached)]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    kind, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(out: Path, step: int, model, tokenizer, optimizer, scheduler, cfg: TrainConfig,
                    losses: list[float], keep: int) -> Path:
    """``<out>/checkpoints/step-NNNNNNNN/``: model folder + state.pt, renamed into place when complete.

    Refuses (:class:`~..fileio.NonFiniteError`) to write NaN/inf weights or optimizer state."""
    from ..fileio import atomic_folder, check_finite, clean_orphans_in
    from ..rewards.rich_feedback.model import save_rahf
    final = out / "checkpoints" / f"step-{step:08d}"
    clean_orphans_in(final.parent)          # a checkpoint write killed half-way (another step's name)
    opt_state = optimizer.state_dict()
    check_finite({"model": model.state_dict(), "optimizer": opt_state}, f"the checkpoint of step {step}")
    with atomic_folder(final, overwrite=True) as tmp:
        save_rahf(model, tokenizer, tmp / "model", overwrite=True)
        torch.save({"step": step, "optimizer": opt_state, "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "config": dataclasses.asdict(cfg), "losses": list(losses)},
                   tmp / "state.pt")
    for old in _checkpoints(out)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _lr_lambda(cfg: TrainConfig):
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def f(step: int) -> float:
        if cfg.warmup and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def rahf_loss(out: dict, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    mse = torch.nn.functional.mse_loss
    seq = out["seq_loss"].float()
    sc = sum(mse(out["scores"][k].float(), batch["scores"][:, i].float()) for i, k in enumerate(SCORE_TYPES))
    hm = sum(mse(out["heatmaps"][k].float(), batch["heatmaps"][:, i].float()) for i, k in enumerate(HEATMAP_TYPES))
    total = cfg.w_seq * seq + cfg.w_score * sc + cfg.w_heatmap * hm
    return total, {"loss": float(total.detach()), "seq": float(seq.detach()), "score": float(sc.detach()),
                   "heatmap": float(hm.detach())}


def _build_model(cfg: TrainConfig):
    from ..rewards.rich_feedback.model import from_parts, load_rahf_folder
    from ..weights.registry import resolve
    if cfg.init:
        model, tok, _ = load_rahf_folder(resolve(cfg.init, folder="rich_feedback").path)
        return model, tok
    if cfg.vit and cfg.t5:
        torch.manual_seed(cfg.seed)
        return from_parts(cfg.vit, cfg.t5, multi_head=cfg.multi_head)
    raise ValueError("Say what to train: --init a RAHF model folder, or --vit and --t5 pretrained folders "
                     "(e.g. google/vit-large-patch16-384 and t5-base).")


def train(cfg: TrainConfig, on_log: Callable[[dict], None] | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Run training; returns ``{"model": final folder, "step", "losses", "resumed_from", "n_skipped_bad", ...}``.

    Everything (settings, files, model names, every record) is checked before a model is loaded. ``cfg.out``
    is the run folder: one process at a time; ``resume="auto"`` continues its last checkpoint (refused when the
    run was started with other settings), ``overwrite`` starts afresh. Stops with
    :class:`~..fileio.NonFiniteError` naming the step (and the batch's records) when the loss or the weights
    become NaN/inf, and never writes such values.
    ``stop_after``: end (with a checkpoint) after this many optimizer steps of *this* call, as an interruption
    would (used by tests to check resuming).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .run_folder import check_settings, claim, read_settings, wipe, write_settings

    cfg.validate()
    skipped: list[str] = []
    records = read_richhf(cfg.train, cfg.verify_crc, skip_bad=cfg.skip_bad, skipped=skipped)
    images = ImageSource(cfg.images, cfg.parquet, uids={r.uid for r in records} if cfg.parquet else None)
    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                      cpu=cfg.cpu)
    if cfg.mixed_precision == "fp16" and acc.device.type == "cpu":
        raise ValueError("fp16 mixed precision needs a GPU: use --mixed-precision bf16 or no on the CPU.")
    out = Path(cfg.out)
    settings = json.loads(json.dumps(cfg.settings(), default=str))
    with claim(out, main=acc.is_main_process) as run:
        resume_dir = None
        if acc.is_main_process:
            fresh = cfg.overwrite or cfg.resume in ("none", "", None)
            has_run = latest_checkpoint(out) is not None or (out / "model").exists() or read_settings(out)
            if fresh and has_run and not cfg.overwrite:
                raise FileExistsError(f"{out} already holds a rich-feedback run: resume it (--resume auto), start "
                                      "afresh with --overwrite, or choose another --out folder.")
            if fresh:
                wipe(out, RUN_ENTRIES)
            elif cfg.resume == "auto" and latest_checkpoint(out) is not None:
                check_settings(out, "rich_feedback", settings)
            write_settings(out, "rich_feedback", settings, {"config": dataclasses.asdict(cfg)})
        acc.wait_for_everyone()
        if not (cfg.overwrite or cfg.resume in ("none", "", None)):
            resume_dir = latest_checkpoint(out) if cfg.resume == "auto" else Path(cfg.resume)
        return _train_claimed(cfg, acc, run, out, records, images, resume_dir, skipped, on_log, stop_after,
                              set_seed)


def _train_claimed(cfg, acc, run, out, records, images, resume_dir, skipped, on_log, stop_after, set_seed):
    from .. import bridge
    from ..fileio import NonFiniteError, check_finite
    from ..rewards.rich_feedback.model import load_rahf_folder, save_rahf
    from ..weights.safe_load import load_training_state

    set_seed(cfg.seed)
    if resume_dir is not None:
        model, tok, _ = load_rahf_folder(resume_dir / "model")
    else:
        model, tok = _build_model(cfg)
    model.train()

    ds = RichHFDataset(records, images, model.config, cfg.skip_missing)
    aug = None if model.config.multi_head else model.augmented_texts
    collate = make_collate(model.config, tok, aug)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    step, losses = 0, []
    if resume_dir is not None:
        st = load_training_state(resume_dir / "state.pt")
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step, losses = int(st["step"]), list(st.get("losses", []))
        _set_rng_state(st["rng"])
        acc.print(f"resuming from {resume_dir} at step {step}")
    model, opt = acc.prepare(model, opt)
    # (the LambdaLR is stepped by us once per optimizer step; not prepared, so it never double-steps)

    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    sampler = EpochBatches(len(ds), cfg.batch_size, cfg.seed, start=step * cfg.grad_accum,
                           total=end * cfg.grad_accum, rank=acc.process_index, world=acc.num_processes)
    # a private generator: creating the iterator must not draw from the global RNG (dropout), or a resumed
    # run would see different dropout masks than an uninterrupted one
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.num_workers,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    unwrapped = lambda: acc.unwrap_model(model)  # noqa: E731
    params = [p for p in model.parameters() if p.requires_grad]
    acc_parts: list[dict] = []
    t0 = time.time()
    run.started()
    with torch.inference_mode(False), torch.enable_grad():
        for batch in loader:
            bridge.check_interrupt()
            with acc.accumulate(model):
                dev = acc.device
                task = ({n: (a.to(dev), b.to(dev)) for n, (a, b) in batch["task_inputs"].items()}
                        if "task_inputs" in batch else None)
                with acc.autocast():
                    res = model(batch["pixel_values"].to(dev), batch["input_ids"].to(dev),
                                batch["attention_mask"].to(dev), labels=batch["labels"].to(dev), task_inputs=task)
                loss, parts = rahf_loss(res, {k: (v.to(dev) if torch.is_tensor(v) else v)
                                              for k, v in batch.items()}, cfg)
                if not torch.isfinite(loss):
                    bad = ", ".join(k for k, v in parts.items() if not math.isfinite(v)) or "loss"
                    raise NonFiniteError(
                        f"The loss ({bad}) became {float(loss.detach())} at step {step + 1} on records "
                        f"{', '.join(batch['uids'][:4])}: lower the learning rate (now {cfg.lr:g}) or use "
                        "bf16/fp32, and start afresh (overwrite).")
                acc.backward(loss)
                acc_parts.append(parts)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if not acc.sync_gradients:
                continue
            if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                raise NonFiniteError(f"The model's weights became NaN or infinite at step {step + 1}: lower the "
                                     f"learning rate (now {cfg.lr:g}) or use bf16/fp32, and start afresh "
                                     "(overwrite).")
            sched.step()
            step += 1
            mean = {k: float(np.mean([p[k] for p in acc_parts])) for k in acc_parts[0]}
            acc_parts = []
            losses.append(mean["loss"])
            mean.update(step=step, lr=sched.get_last_lr()[0], seconds=round(time.time() - t0, 2))
            if on_log is not None:
                on_log(mean)
            if cfg.log_every and (step % cfg.log_every == 0 or step == 1) and acc.is_main_process:
                acc.print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in mean.items()}))
            if (cfg.save_every and step % cfg.save_every == 0) or step == end:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(out, step, unwrapped(), tok, opt, sched, cfg, losses, cfg.keep_checkpoints)
    acc.wait_for_everyone()
    final = None
    if step >= cfg.steps and acc.is_main_process:
        check_finite(unwrapped().state_dict(), "the trained model")
        final = save_rahf(unwrapped().eval(), tok, out / "model", overwrite=True)
    return {"model": str(final) if final else None, "step": step, "losses": losses,
            "resumed_from": str(resume_dir) if resume_dir else None, "n_examples": len(ds),
            "n_label_mismatch": ds.n_label_mismatch, "n_skipped_bad": len(skipped), "skipped_bad": skipped}


# ---------------------------------------------------------------- synthetic data (tests, selftest, demos)
def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_synthetic_richhf(folder: str | os.PathLike, n: int = 8, image_size: int = 32, map_size: int = 64,
                           seed: int = 0, with_caption: bool = False) -> tuple[Path, Path]:
    """A tiny RichHF-style dataset in the real format: ``<folder>/train.tfrecord`` + ``<folder>/images``
    (``<uid>.png`` and ``prompts.json``). Scores are multiples of 1/12, heatmaps PNG 0..255 (some empty),
    labels one 0/1 per prompt word. Images correlate with the targets so a model can learn them."""
    from .tfrecord import write_examples
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    subjects = ["cat", "dog", "car", "tree", "house", "bird"]
    colours = ["red", "blue", "green", "yellow"]
    prompts, exs = {}, []
    for i in range(n):
        uid = f"{i:08x}-synthetic"
        subj, col = subjects[i % len(subjects)], colours[i % len(colours)]
        prompt = f"a {col} {subj}, on the grass."
        bright = (i % 4) / 3.0
        img = np.full((image_size, image_size, 3), 40 + 180 * bright, dtype=np.float32)
        hm_a = np.zeros((map_size, map_size), np.float32)
        if i % 2 == 0:                              # a blob in the top-left quarter; the image shows it too
            q = map_size // 4
            hm_a[q:2 * q, q:2 * q] = 255
            s = image_size // 4
            img[s:2 * s, s:2 * s] = [255, 0, 0]
        hm_m = np.zeros((map_size, map_size), np.float32)
        words = prompt_words(prompt)
        labels = [1] * len(words)
        if i % 3 == 0:
            labels[1] = 0                           # the colour word is misaligned
            hm_m[map_size // 2:, map_size // 2:] = 128
        Image.fromarray(img.astype(np.uint8)).save(img_dir / f"{uid}.png")
        prompts[uid] = prompt
        ex = {"filename": f"images/{uid}.png",
              "aesthetics_score": [round(bright * 12) / 12], "artifact_score": [0.25 if i % 2 == 0 else 0.75],
              "misalignment_score": [0.5 if i % 3 == 0 else 11 / 12], "overall_score": [round(rng.uniform() * 12) / 12],
              "artifact_map": [png_bytes(hm_a)], "misalignment_map": [png_bytes(hm_m)],
              "prompt_misalignment_label": [" ".join(map(str, labels)).encode()]}
        if with_caption:
            ex["caption"] = [prompt.encode()]
        exs.append(ex)
    (img_dir / "prompts.json").write_text(json.dumps(prompts, indent=1))
    rec = write_examples(folder / "train.tfrecord", exs)
    return rec, img_dir


# ---------------------------------------------------------------- evaluation (the paper's protocol)
def evaluate(handle, records: list[RichHFRecord], images: ImageSource, batch_size: int = 8,
             limit: int | None = None, keywords: bool = True, max_new_tokens: int | None = None,
             skip_missing: bool = False) -> dict[str, Any]:
    """Predict on RichHF records and compute every metric (heatmaps compared at the model's size, as the
    re-implementation does at 384 px). Returns ``{"scores", "heatmaps", "keywords", "n"}``."""
    from ..rewards.rich_feedback import metrics as M
    from ..rewards.rich_feedback.predict import predict
    ds = RichHFDataset(records[:limit] if limit else records, images, handle.model.config, skip_missing)
    if not len(ds):
        raise ValueError("Nothing to evaluate: no record has both an image and a prompt.")
    s = handle.model.config.image_size
    pred_scores = {k: [] for k in SCORE_TYPES}
    gt_scores = {k: [] for k in SCORE_TYPES}
    pred_maps = {k: [] for k in HEATMAP_TYPES}
    gt_maps = {k: [] for k in HEATMAP_TYPES}
    pred_txt, gt_txt = [], []
    for start in range(0, len(ds), batch_size):
        recs = ds.records[start:start + batch_size]
        ims = [images.image(r.uid) for r in recs]
        res = predict(handle, ims, [r.prompt for r in recs], batch_size=batch_size, keywords=keywords,
                      max_new_tokens=max_new_tokens)
        for r in recs:
            words = prompt_words(r.prompt)
            gt_txt.append(tagged_target(words, align_labels(words, r.labels)))
            for k in SCORE_TYPES:
                gt_scores[k].append(r.scores[k])
            for k in HEATMAP_TYPES:
                gt_maps[k].append(decode_map(r.maps[k], s).numpy())
        for k in SCORE_TYPES:
            pred_scores[k] += res.scores[k]
        for k in HEATMAP_TYPES:
            pred_maps[k] += list(res.model_heatmaps[k].numpy())
        pred_txt += res.tagged
    out = {"scores": M.score_metrics(pred_scores, gt_scores),
           "heatmaps": {k: M.heatmap_metrics(pred_maps[k], gt_maps[k]) for k in HEATMAP_TYPES},
           "keywords": M.keyword_metrics(pred_txt, gt_txt) if keywords else None, "n": len(ds)}
    return out
