"""A tiny T5 encoder and its tokenizer, built offline and deterministically (SD3's and FLUX's third
text encoder, scaled down).

Real T5 tokenizers are SentencePiece models; `sentencepiece` is not needed here: the tokenizer is a
`tokenizers` Unigram model whose pieces are the tiny CLIP vocabulary's whole words, lower-case and
capitalised (so a concept word is one token in both encoders, as it usually is in the real ones),
plus single characters for
everything else, with T5's special tokens (<pad> 0, </s> 1, <unk> 2).
"""

from __future__ import annotations

import functools
import string
from typing import Any

from ..models.tiny import tiny_words

T5_CONFIG: dict[str, Any] = {
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",  # T5 v1.1, the variant SD3 and FLUX use
}

# The tiny models read this many T5 tokens (the real ones: 256 for SD3, 512 for FLUX-dev): the
# text stream of the joint attention stays short, so the tiny transformers stay fast.
TINY_T5_LENGTH = 32

_WORD_SCORE = -5.0  # a whole word always beats spelling it out with characters (-10 each)
_CHAR_SCORE = -10.0


@functools.lru_cache(maxsize=1)
def tiny_t5_vocab() -> tuple[tuple[str, float], ...]:
    """(piece, log-probability) pairs; ids are positions. Deterministic."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    # T5 is cased: "Van Gogh" must be whole words as well as "van gogh"
    words = [("▁" + v, _WORD_SCORE) for w in tiny_words() for v in (w, w.capitalize())]
    chars = [(c, _CHAR_SCORE) for c in string.ascii_letters + string.digits + string.punctuation]
    for piece, score in words + chars:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))
    return tuple(pieces)


def build_tiny_t5_tokenizer(max_length: int = TINY_T5_LENGTH):
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=list(tiny_t5_vocab()), extra_ids=0, model_max_length=max_length)


def build_tiny_t5_encoder(d_model: int, seed: int):
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tiny_t5_vocab()), d_model=d_model, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, **T5_CONFIG)
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()
