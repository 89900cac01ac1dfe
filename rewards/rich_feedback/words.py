"""RichHF-18K prompt words and the ``_0`` misalignment tags of RAHF's sequence output.

The dataset labels one value per prompt *word*, where words come from splitting the Pick-a-Pic prompt on
``, . ? ! " : ;`` and space and dropping empty strings (label 0 = misaligned, 1 = aligned). RAHF's T5 decoder
rewrites the cleaned prompt with ``_0`` appended to each misaligned word (``a yellow_0 cat``).
"""
from __future__ import annotations

import re
from typing import Sequence

_SPLIT = re.compile(r'[,.?!":; ]+')
TAG = "_0"


def prompt_words(prompt: str) -> list[str]:
    """The dataset's word split: on , . ? ! " : ; and space; empty strings dropped."""
    return [w for w in _SPLIT.split(str(prompt).replace("\n", " ").replace("\t", " ")) if w]


def clean_prompt(prompt: str) -> str:
    """The model's text input: the RichHF words joined by single spaces."""
    return " ".join(prompt_words(prompt))


def tagged_target(words: Sequence[str], labels: Sequence[int]) -> str:
    """Sequence target: words joined by spaces, ``_0`` appended where the label is 0 (misaligned)."""
    if len(words) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(words)} prompt words.")
    return " ".join(w + TAG if int(lab) == 0 else w for w, lab in zip(words, labels))


def align_labels(words: Sequence[str], labels: Sequence[int]) -> list[int]:
    """Fit a label list to the word count (rare mismatches in the dataset): truncate, or pad with 1 (aligned)."""
    labels = [int(v) for v in labels][:len(words)]
    return labels + [1] * (len(words) - len(labels))


def parse_tagged(generated: str, prompt: str) -> tuple[list[str], list[int]]:
    """Misaligned keywords of a generated sequence, aligned by position with the cleaned prompt words.

    Returns ``(keywords, labels)``: ``labels[i]`` is 0 when prompt word ``i`` was tagged ``_0`` at position
    ``i`` of the generated text (same word, case-insensitive), else 1. A tagged word that is not at its
    position (the decoder dropped or inserted a word) is matched to the first untagged occurrence of the same
    word in the prompt, so a slightly garbled sequence still yields its keywords.
    """
    words = prompt_words(prompt)
    gen = str(generated).strip().split()
    labels = [1] * len(words)
    leftovers = []
    for i, g in enumerate(gen):
        if not g.endswith(TAG):
            continue
        base = g[:-len(TAG)]
        if i < len(words) and words[i].lower() == base.lower():
            labels[i] = 0
        elif base:
            leftovers.append(base.lower())
    for base in leftovers:
        for j, w in enumerate(words):
            if labels[j] == 1 and w.lower() == base:
                labels[j] = 0
                break
    keywords = [w for w, lab in zip(words, labels) if lab == 0]
    return keywords, labels
