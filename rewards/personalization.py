"""Personalization metrics of the DreamBooth protocol: DINO, CLIP-I and CLIP-T.

For each generated image ``g`` with the prompt text ``y`` and the subject's reference photos ``r_1..r_R``:

* **DINO**   = mean_k cos(DINO(g), DINO(r_k)), DINO = the CLS token of a self-supervised ViT-S/16
  (``facebook/dino-vits16``: ``last_hidden_state[:, 0]``, after the final layer norm);
* **CLIP-I** = mean_k cos(CLIP_img(g), CLIP_img(r_k)), CLIP's projected image embeddings;
* **CLIP-T** = cos(CLIP_img(g), CLIP_txt(y)), CLIP's projected text embedding of the prompt (see
  ``dreambench`` for which text: the identifier is removed by default).

All three lie in [-1, 1], higher is better. Per prompt: the mean over its images; overall: the mean over all
images (equal to the mean over prompts when every prompt has the same number of samples, as in the protocol).
Each model's own image processor prepares the images (DINO: resize to 224 and ImageNet normalisation; CLIP: resize
the short side, centre crop, CLIP normalisation). Embeddings are computed in batches, references once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import bridge
from .images import as_pil_list
from .types import RewardScores

DEFAULT_DINO = "dino-vits16"
DEFAULT_CLIP = "clip-vit-base-patch32"
METRICS = ("dino", "clip_i", "clip_t")
LABELS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T"}

# Reported on DreamBench with SD 1.4 (DPG paper, Table 1, via the reference notes): DINO, CLIP-I, CLIP-T.
PAPER_NUMBERS = {
    "DreamBooth": (0.694, 0.762, 0.282),
    "DreamBooth + DINO reward": (0.723, 0.783, 0.270),
    "DreamBooth + Look Forward (DPG)": (0.738, 0.797, 0.269),
}


def _features(out) -> torch.Tensor:
    """Projected features from get_image_features / get_text_features (a tensor or, in transformers 5, an output)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class PersonalizationScores:
    """Per generated image: ``dino``, ``clip_i``, ``clip_t``; ``group[i]`` is the prompt index of image ``i``."""

    dino: list[float]
    clip_i: list[float]
    clip_t: list[float]
    prompts: list[str]
    clip_texts: list[str]
    group: list[int]
    n_references: int
    reference_dino: float | None = None     # references against each other (r ≠ s): the "real images" ceiling
    reference_clip_i: float | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dino)

    def values(self, metric: str) -> list[float]:
        return getattr(self, metric)

    def means(self) -> dict[str, float]:
        return {m: _mean(self.values(m)) for m in METRICS}

    def per_prompt(self) -> list[dict]:
        """One row per prompt (in order of first appearance): prompt, clip text, n, and the three means."""
        order: list[int] = []
        for g in self.group:
            if g not in order:
                order.append(g)
        rows = []
        for g in order:
            idx = [i for i, x in enumerate(self.group) if x == g]
            row = {"group": g, "prompt": self.prompts[idx[0]], "clip_text": self.clip_texts[idx[0]], "n": len(idx)}
            row.update({m: _mean([self.values(m)[i] for i in idx]) for m in METRICS})
            rows.append(row)
        return rows

    def reward_scores(self) -> list[RewardScores]:
        """The three metrics as REWARDLOOP_SCORES (per image, −1..1, higher is better)."""
        return [RewardScores(m, self.values(m), True, (-1.0, 1.0),
                             [{"prompt": p, "clip_text": t} for p, t in zip(self.prompts, self.clip_texts)],
                             list(self.group)) for m in METRICS]

    def table(self, width: int = 60) -> str:
        """Fixed-width table: one row per prompt, then the mean (and the references' own similarity)."""
        rows = self.per_prompt()
        head = f"{'#':>3}  {'prompt':<{width}}  {'n':>3}  {'DINO':>6}  {'CLIP-I':>6}  {'CLIP-T':>6}"
        lines = [head, "-" * len(head)]
        for r in rows:
            p = r["prompt"] if len(r["prompt"]) <= width else r["prompt"][:width - 1] + "…"
            lines.append(f"{r['group']:>3}  {p:<{width}}  {r['n']:>3}  {r['dino']:6.3f}  {r['clip_i']:6.3f}  "
                         f"{r['clip_t']:6.3f}")
        lines.append("-" * len(head))
        m = self.means()
        lines.append(f"{'':>3}  {f'mean over {len(self)} images, {len(rows)} prompts':<{width}}  {len(self):>3}  "
                     f"{m['dino']:6.3f}  {m['clip_i']:6.3f}  {m['clip_t']:6.3f}")
        if self.reference_dino is not None:
            lines.append(f"{'':>3}  {f'references vs each other ({self.n_references} images)':<{width}}  "
                         f"{self.n_references:>3}  {self.reference_dino:6.3f}  {self.reference_clip_i:6.3f}  "
                         f"{'':>6}")
        lines.append("DINO, CLIP-I, CLIP-T: cosine similarity, -1..1, higher is better.")
        return "\n".join(lines)


def _mean(v: Sequence[float]) -> float:
    return float(sum(v) / len(v)) if len(v) else float("nan")


def _offdiag_mean(sim: torch.Tensor) -> float | None:
    n = sim.shape[0]
    if n < 2:
        return None
    mask = ~torch.eye(n, dtype=torch.bool)
    return float(sim[mask].mean())


class PersonalizationScorer:
    """DINO + CLIP handles (from the shared model cache) and the three metrics."""

    def __init__(self, dino: str = DEFAULT_DINO, clip: str = DEFAULT_CLIP, device=None, dtype=None,
                 batch_size: int = 16, keep_loaded: bool = False):
        from ..weights.loaders import load_clip, load_dino
        self.dino = load_dino(dino, dtype=dtype, device=device)
        self.clip = load_clip(clip, dtype=dtype, device=device)
        self.batch_size = max(1, int(batch_size))
        self.keep_loaded = keep_loaded

    # -------------------------------------------------------------- embeddings (L2-normalised, float32, CPU)
    @torch.no_grad()
    def _batched(self, handle, items, fn) -> torch.Tensor:
        bridge.to_device_for_use(handle.model, handle.device)
        out = []
        try:
            for s in range(0, len(items), self.batch_size):
                out.append(F.normalize(fn(items[s:s + self.batch_size]).float(), dim=-1).cpu())
                bridge.check_interrupt()
        finally:
            bridge.offload(handle.model, self.keep_loaded)
        return torch.cat(out) if out else torch.zeros(0)

    def dino_features(self, images) -> torch.Tensor:
        h = self.dino

        def fn(chunk):
            px = h.processor(images=list(chunk), return_tensors="pt")["pixel_values"]
            return h.model(pixel_values=px.to(h.device, h.dtype)).last_hidden_state[:, 0]
        return self._batched(h, as_pil_list(images), fn)

    def clip_image_features(self, images) -> torch.Tensor:
        h = self.clip
        proc = getattr(h.processor, "image_processor", h.processor)

        def fn(chunk):
            px = proc(images=list(chunk), return_tensors="pt")["pixel_values"]
            return _features(h.model.get_image_features(pixel_values=px.to(h.device, h.dtype)))
        return self._batched(h, as_pil_list(images), fn)

    def clip_text_features(self, texts: Sequence[str]) -> torch.Tensor:
        h = self.clip
        tok = getattr(h.processor, "tokenizer", h.processor)
        unique = list(dict.fromkeys(texts))

        def fn(chunk):
            enc = tok(list(chunk), padding=True, truncation=True, return_tensors="pt").to(h.device)
            return _features(h.model.get_text_features(**enc))
        feats = self._batched(h, unique, fn)
        pos = {t: i for i, t in enumerate(unique)}
        return feats[[pos[t] for t in texts]]

    # -------------------------------------------------------------- the metrics
    def score(self, generated, references, clip_texts: Sequence[str], prompts: Sequence[str] | None = None,
              group: Sequence[int] | None = None) -> PersonalizationScores:
        gen = as_pil_list(generated)
        refs = as_pil_list(references)
        if not gen:
            raise ValueError("No generated images to evaluate.")
        if not refs:
            raise ValueError("No reference images: give at least one photo of the subject.")
        clip_texts = [str(t) for t in clip_texts]
        if len(clip_texts) != len(gen):
            raise ValueError(f"Got {len(clip_texts)} CLIP-T texts for {len(gen)} generated images: give one per image.")
        prompts = list(prompts) if prompts is not None else list(clip_texts)
        if len(prompts) != len(gen):
            raise ValueError(f"Got {len(prompts)} prompts for {len(gen)} generated images.")
        if group is None:
            first: dict[str, int] = {}
            group = [first.setdefault(p, len(first)) for p in prompts]
        d_gen, d_ref = self.dino_features(gen), self.dino_features(refs)
        c_gen, c_ref = self.clip_image_features(gen), self.clip_image_features(refs)
        c_txt = self.clip_text_features(clip_texts)
        dino = (d_gen @ d_ref.T).mean(dim=1)
        clip_i = (c_gen @ c_ref.T).mean(dim=1)
        clip_t = (c_gen * c_txt).sum(dim=1)
        for name, v in (("DINO", dino), ("CLIP-I", clip_i), ("CLIP-T", clip_t)):
            if not torch.isfinite(v).all():
                raise RuntimeError(f"{name} produced NaN/inf scores: the model or the images are broken "
                                   "(try --dtype fp32).")
        return PersonalizationScores(dino.tolist(), clip_i.tolist(), clip_t.tolist(), list(prompts), clip_texts,
                                     [int(g) for g in group], len(refs), _offdiag_mean(d_ref @ d_ref.T),
                                     _offdiag_mean(c_ref @ c_ref.T),
                                     {"dino_model": self.dino.name, "clip_model": self.clip.name})
