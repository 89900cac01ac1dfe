"""LLM judge: how likely is each label to appear in the prompted scene? (FineRewards' 1/2/3 scale)

Two modes on any HF causal chat LM handle (``weights.loaders.load_llm``):

``logprob`` (default, deterministic)
    For every (label, prompt) pair the chat is the paper's system + user text (one tag), followed by the assistant
    turn started with ``"<label>:"`` (after one space when the conversation ends without white space, as the Vicuna
    layout's ``ASSISTANT:`` does: ``ASSISTANT: cat:``). One batched forward (left padding, position ids from the
    attention mask) over all pairs that are not cached yet reads the next-token probabilities of the digits "1",
    "2", "3" (every single-token spelling of each digit in this tokenizer is summed: "1" and, where it exists as one
    token, " 1"). The three are renormalised → distribution ``p``; the score is the expectation ``1·p1 + 2·p2 +
    3·p3`` in [1, 3]; ``digit_mass`` (probability on the digits before renormalising) tells how well the model
    follows the format. Results are cached by (model, label, prompt) across calls.

``paper``
    The released code's protocol, fixed: one fresh conversation per image (system + user text with all tags),
    greedy generation, then :func:`parse_tag_scores` reads ``tag:score`` pairs (any order, extra text and
    digits ignored, scores clamped to 1..3, missing tags → 2).

Template (quoted from the FineRewards repository, typos kept): see ``PAPER_SYSTEM`` and ``PAPER_USER``.
Models without a chat template (Vicuna v1.5) get the Vicuna v1.1 layout ``SYSTEM USER: msg ASSISTANT:``.
"""
from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import bridge
from ..weights.loaders import ModelHandle

PAPER_SYSTEM = ("To respond,you must reply with the format:'firsttag:3,secondtag:1,thirdtag:2,···',Do not include "
                "any extra information or format the response in any other way.")
PAPER_USER = ("Please assess the described scene based on the provided prompt and determine the likelihood of each "
              "tag appearing in the scene. Assign a score to each tag according to the following criteria:  If a "
              "tag is certain to appear, assign a score of 3. If a tag may appear, assign a score of 2. If a tag is "
              "unlikely to appear, assign a score of 1.\nprompt:{prompt};tags:{tags}")
TEMPLATE_VERSION = "finerewards-a3-v2"  # v2: the prefill is separated from a layout ending in "ASSISTANT:"
DIGITS = (1, 2, 3)


@dataclass(frozen=True)
class Judgement:
    label: str
    prompt: str
    probs: tuple[float, float, float]   # P(1), P(2), P(3), renormalised over the three digits
    score: float                        # expectation in [1, 3]
    digit_mass: float = math.nan        # probability on the digit tokens before renormalising (logprob mode)
    mode: str = "logprob"
    raw: str = ""                       # the generated answer (paper mode)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class JudgeCache:
    """LRU cache of judgements keyed by (model id, mode, label, prompt); thread-safe; shared across calls."""

    def __init__(self, max_items: int = 200_000):
        self.max_items = max_items
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                self.stats.hits += 1
                return self._d[key]
            self.stats.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.max_items:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._d)


JUDGE_CACHE = JudgeCache()


def model_id(llm: ModelHandle) -> str:
    return f"{llm.path}|{llm.name}|{str(llm.dtype).replace('torch.', '')}"


# ---------------------------------------------------------------- prompts
def user_message(prompt: str, tags: Sequence[str]) -> str:
    return PAPER_USER.format(prompt=prompt.strip(), tags=", ".join(t.strip() for t in tags))


def chat_text(tokenizer, system: str, user: str) -> tuple[str, bool]:
    """The conversation as text, ending where the assistant starts; second value: add special tokens?"""
    if getattr(tokenizer, "chat_template", None):
        for messages in ([{"role": "system", "content": system}, {"role": "user", "content": user}],
                         [{"role": "user", "content": f"{system}\n{user}"}]):
            try:
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                return str(text), False
            except Exception:  # template without a system role
                continue
    return f"{system} USER: {user} ASSISTANT:", True


def assistant_prefill(conversation: str, label: str) -> str:
    """The start of the assistant's answer, ``"<label>:"``. A conversation that ends without white space (the
    Vicuna layout ``… ASSISTANT:``) gets one space first, as the model's own answer would start
    (``ASSISTANT: cat:``, never ``ASSISTANT:cat:``); chat templates end their generation prompt with a newline."""
    sep = "" if not conversation or conversation[-1].isspace() else " "
    return f"{sep}{label.strip()}:"


def digit_token_ids(tokenizer) -> dict[int, list[int]]:
    """Every single-token spelling of "1", "2", "3" (plain and with a leading space / word marker)."""
    vocab = tokenizer.get_vocab()
    out: dict[int, list[int]] = {}
    for d in DIGITS:
        ids: list[int] = []
        for spelling in (str(d), " " + str(d)):
            enc = tokenizer.encode(spelling, add_special_tokens=False)
            if len(enc) == 1:
                ids.append(enc[0])
        for tok in (str(d), "Ġ" + str(d), "▁" + str(d)):
            if tok in vocab:
                ids.append(vocab[tok])
        ids = sorted(set(ids))
        if not ids:
            raise ValueError(f"The LLM's tokenizer has no single token for the digit {d}: this model cannot be used "
                             "in logprob mode; use judge mode 'paper'.")
        out[d] = ids
    shared = set(out[1]) & set(out[2]) | set(out[1]) & set(out[3]) | set(out[2]) & set(out[3])
    if shared:
        raise ValueError(f"The tokenizer maps different digits to the same token ids {sorted(shared)}.")
    return out


# ---------------------------------------------------------------- paper-mode parser
_NUM = r"(-?\d+(?:\.\d+)?)"


def parse_tag_scores(text: str, tags: Sequence[str], default: int = 2) -> tuple[list[int], list[bool]]:
    """Scores for ``tags`` from an answer like ``"cat:3, tree:1"``; returns (scores, found flags).

    Rules: case-insensitive; a tag matches as a whole word (optional plural "s"/"es"), followed by ``:``,
    ``=`` or ``-`` and a number (quotes/spaces allowed around); tags are matched longest first and a text
    span is used once (so "table" does not steal "coffee table:2"); the number is rounded and clamped to
    1..3; a tag that is not found gets ``default`` (2). If no tag is found at all but the answer holds exactly
    ``len(tags)`` standalone numbers, they are taken in order (answers like ``"3, 1, 2"``).
    """
    t = (text or "").lower().replace("：", ":").replace("＝", "=")
    scores = [default] * len(tags)
    found = [False] * len(tags)
    used: list[tuple[int, int]] = []
    order = sorted(range(len(tags)), key=lambda i: (-len(tags[i].strip()), i))
    for i in order:
        tag = tags[i].strip().lower()
        if not tag:
            continue
        words = r"\s+".join(re.escape(w) for w in tag.split())
        pat = re.compile(r"(?<![a-z0-9])" + words + r"(?:e?s)?(?![a-z0-9])\s*['\"`*]*\s*[:=\-–]\s*['\"`*]*\s*" + _NUM)
        for m in pat.finditer(t):
            if any(m.start() < b and a < m.end() for a, b in used):
                continue
            used.append((m.start(), m.end()))
            scores[i] = clamp_score(float(m.group(1)))
            found[i] = True
            break
    if not any(found) and tags:
        nums = re.findall(r"(?<![\d.])(-?\d+(?:\.\d+)?)(?![\d.])", t)
        if len(nums) == len(tags):
            scores = [clamp_score(float(n)) for n in nums]
            found = [True] * len(tags)
    return scores, found


def clamp_score(v: float) -> int:
    if math.isnan(v):
        return 2
    return int(min(3, max(1, math.floor(v + 0.5))))


# ---------------------------------------------------------------- the judge
def _accepts_config(cls) -> bool:
    import inspect
    try:
        return "config" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def _last_logits(model, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """Next-token logits at the last position only (``logits_to_keep=1`` skips the LM head elsewhere)."""
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    try:
        return model(**kw, logits_to_keep=1).logits[:, -1]
    except TypeError:  # older/custom models without logits_to_keep
        return model(**kw).logits[:, -1]


@dataclass
class LLMJudge:
    llm: ModelHandle
    mode: str = "logprob"          # logprob | paper
    batch_size: int = 64           # pairs per forward (all pending pairs in one forward when they fit)
    max_new_tokens: int = 0        # paper mode; 0 = 24 + 8 per tag (the paper used 512)
    cache: JudgeCache = field(default_factory=lambda: JUDGE_CACHE)
    system: str = PAPER_SYSTEM
    prefix_cache: bool = True      # run the shared template prefix once (same numbers, much less compute)

    def __post_init__(self):
        if self.mode not in ("logprob", "paper"):
            raise ValueError(f"Unknown judge mode {self.mode!r}: use 'logprob' or 'paper'.")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        self._digits = None

    @property
    def tokenizer(self):
        return self.llm.processor

    def _key(self, mode: str, label, prompt: str):
        return (model_id(self.llm), TEMPLATE_VERSION, self.system, mode, label, prompt)

    # ------------------------------------------------ logprob mode
    def pair_text(self, label: str, prompt: str) -> tuple[str, bool]:
        text, special = chat_text(self.tokenizer, self.system, user_message(prompt, [label]))
        return text + assistant_prefill(text, label), special

    @torch.no_grad()
    def forward_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        """Uncached: one left-padded forward per ``batch_size`` pairs → judgements (same order)."""
        if not pairs:
            return []
        if self._digits is None:
            self._digits = digit_token_ids(self.tokenizer)
        tok, model = self.tokenizer, self.llm.model
        device = next(model.parameters()).device
        out: list[Judgement] = []
        old_side = tok.padding_side
        tok.padding_side = "left"
        bar = bridge.Progress(len(pairs), "LLM judging")
        try:
            for s in range(0, len(pairs), self.batch_size):
                chunk = pairs[s:s + self.batch_size]
                texts = [self.pair_text(lab, pr) for lab, pr in chunk]
                logits = None
                if self.prefix_cache:
                    logits = self._prefix_cached_logits([t for t, _ in texts], texts[0][1], device)
                if logits is None:
                    enc = tok([t for t, _ in texts], return_tensors="pt", padding=True,
                              add_special_tokens=texts[0][1]).to(device)
                    att = enc["attention_mask"]
                    pos = (att.long().cumsum(-1) - 1).clamp(min=0)
                    logits = _last_logits(model, enc["input_ids"], att, pos)
                probs = logits.float().softmax(dim=-1)
                per_digit = torch.stack([probs[:, self._digits[d]].sum(-1) for d in DIGITS], dim=-1)  # [B,3]
                mass = per_digit.sum(-1)
                norm = torch.where(mass[:, None] > 0, per_digit / mass.clamp(min=1e-30)[:, None],
                                   torch.full_like(per_digit, 1 / 3))
                for (lab, pr), p, m in zip(chunk, norm.tolist(), mass.tolist()):
                    score = 1 * p[0] + 2 * p[1] + 3 * p[2]
                    out.append(Judgement(lab, pr, (p[0], p[1], p[2]), score, m, "logprob"))
                bar.update(len(chunk))  # also checks for an interrupt
        finally:
            tok.padding_side = old_side
            bar.close()
        return out

    def _prefix_cached_logits(self, texts: list[str], special: bool, device) -> torch.Tensor | None:
        """Shared-prefix forward: the token prefix common to all texts (the system text and instructions) runs
        once, its key/value cache is repeated over the batch, and only the differing suffixes (left-padded
        between prefix and suffix, masked) run batched. Returns None when not applicable (the caller then runs
        the plain batched forward)."""
        tok, model = self.tokenizer, self.llm.model
        seqs = [tok(t, add_special_tokens=special)["input_ids"] for t in texts]
        n = min(len(x) for x in seqs) - 1          # keep at least one token per sequence after the prefix
        p = 0
        while p < n and all(x[p] == seqs[0][p] for x in seqs):
            p += 1
        if p < 16:
            return None
        try:
            from transformers import DynamicCache
            prefix = torch.tensor([seqs[0][:p]], device=device)
            cache = DynamicCache(config=model.config) if _accepts_config(DynamicCache) else DynamicCache()
            import inspect
            cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
            model(input_ids=prefix, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            b = len(seqs)
            cache.batch_repeat_interleave(b)
            suf = [x[p:] for x in seqs]
            width = max(len(x) for x in suf)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            ids = torch.full((b, width), pad, dtype=torch.long)
            att = torch.zeros(b, p + width, dtype=torch.long)
            att[:, :p] = 1
            for i, x in enumerate(suf):
                ids[i, width - len(x):] = torch.tensor(x)
                att[i, p + width - len(x):] = 1
            pos = (att.cumsum(-1) - 1).clamp(min=0)[:, p:]
            ids, att, pos = ids.to(device), att.to(device), pos.to(device)
            out = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1,
                        **{cache_kw: cache})
            return out.logits[:, -1]
        except Exception:  # an architecture without a standard cache: plain forward instead
            return None

    def judge_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        """Judgements for (label, prompt) pairs; cached pairs are not recomputed, duplicates computed once."""
        if self.mode == "paper":
            return [self.judge_paper(pr, [lab])[0] for lab, pr in pairs]
        results: dict[tuple[str, str], Judgement] = {}
        pending: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for lab, pr in pairs:
            k = (lab, pr)
            if k in seen:
                continue
            seen.add(k)
            hit = self.cache.get(self._key("logprob", lab, pr))
            if hit is not None:
                results[k] = hit
            else:
                pending.append(k)
        for j in (self.forward_pairs(pending) if pending else []):
            self.cache.put(self._key("logprob", j.label, j.prompt), j)
            results[(j.label, j.prompt)] = j
        return [results[(lab, pr)] for lab, pr in pairs]

    def judge(self, labels: Sequence[str], prompt: str) -> list[Judgement]:
        if self.mode == "paper":
            return self.judge_paper(prompt, labels)
        return self.judge_pairs([(lab, prompt) for lab in labels])

    def judge_many(self, labels_per_prompt: Sequence[Sequence[str]], prompts: Sequence[str]) -> list[list[Judgement]]:
        """Several images at once: logprob mode judges every (label, prompt) pair of all images in one go."""
        if len(labels_per_prompt) != len(prompts):
            raise ValueError("One label list per prompt is needed.")
        if self.mode == "paper":
            out = []
            with bridge.Progress(len(prompts), "LLM judging") as bar:
                for labs, p in zip(labels_per_prompt, prompts):
                    out.append(self.judge_paper(p, labs) if labs else [])
                    bar.update(1)
            return out
        flat = [(lab, p) for labs, p in zip(labels_per_prompt, prompts) for lab in labs]
        got = iter(self.judge_pairs(flat))
        return [[next(got) for _ in labs] for labs in labels_per_prompt]

    # ------------------------------------------------ paper mode
    @torch.no_grad()
    def generate_answer(self, prompt: str, tags: Sequence[str]) -> str:
        """A fresh conversation (system + one user turn), greedy decoding; returns the answer text."""
        tok, model = self.tokenizer, self.llm.model
        device = next(model.parameters()).device
        text, special = chat_text(tok, self.system, user_message(prompt, tags))
        enc = tok(text, return_tensors="pt", add_special_tokens=special).to(device)
        n_new = self.max_new_tokens or (24 + 8 * len(tags))
        ids = model.generate(**enc, max_new_tokens=n_new, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        return tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def judge_paper(self, prompt: str, tags: Sequence[str]) -> list[Judgement]:
        tags = list(tags)
        key = self._key("paper", tuple(tags), prompt)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        raw = self.generate_answer(prompt, tags)
        scores, _found = parse_tag_scores(raw, tags)
        out = [Judgement(t, prompt, tuple(1.0 if s == d else 0.0 for d in DIGITS), float(s), math.nan, "paper", raw)
               for t, s in zip(tags, scores)]
        self.cache.put(key, out)
        bridge.check_interrupt()
        return out


def judge_labels(llm: ModelHandle, labels: Sequence[str], prompt: str, mode: str = "logprob",
                 **kw) -> list[Judgement]:
    """Convenience: judgements for ``labels`` against one ``prompt``."""
    return LLMJudge(llm, mode=mode, **kw).judge(labels, prompt)
