"""A CLIP BPE tokenizer whose merges are learned from the caption vocabulary, so every caption word is one token.

The byte-level alphabet (and its ``</w>`` variants) stays in the vocabulary, so any prompt still tokenizes
(unknown words fall apart into sub-words or bytes), exactly like CLIP's own tokenizer.
"""

from __future__ import annotations

from collections import Counter

from ..testing import _bytes_to_unicode
from .factors import caption_vocabulary

#: Longest prompt in tokens (captions use at most ~30, including the two special tokens).
MODEL_MAX_LENGTH = 40


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE training on a word list until every word is a single token (deterministic tie-breaking)."""
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for s in seqs.values():
            for a, b in zip(s, s[1:], strict=False):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out


def world_tokenizer(extra_words: list[str] | None = None):
    """The synthetic world's ``CLIPTokenizer`` (vocabulary: bytes, bytes + ``</w>``, learned merges, specials)."""
    from transformers import CLIPTokenizer

    words = caption_vocabulary() + list(extra_words or [])
    merges = learn_merges(words)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            vocab_list.append(a + b)
            seen.add(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.model_max_length = MODEL_MAX_LENGTH
    return tok
