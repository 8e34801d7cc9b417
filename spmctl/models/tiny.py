"""The parts the built-in tiny models share: CLIP tokenizer and text encoder, VAE, scheduler.

The tiny models (`spmctl/families/*/tiny.py`: SD 1.x's is `-m tiny`) are the quick start's, the
tests' and the CPU benchmarks' models: random weights, no download. Every part is built from a small
config with a fixed seed, so two builds are bit-identical.
The tokenizer is a real CLIP BPE tokenizer whose vocabulary is generated here:
the 256 byte symbols plus whole-word merges for a fixed word list (the
UnlearnCanvas names and common prompt words), so concept words are single
tokens just as they are in the real CLIP vocabulary.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ..datafiles import data_file

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),  # four levels: latents are 1/8 of the image, as in SD
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
}

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,  # > 1 so clip_skip has layers to skip
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "num_train_timesteps": 1000,
}

_COMMON_WORDS = (
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "by", "for", "from", "image",
    "photo", "picture", "painting", "drawing", "style", "art", "artwork", "portrait", "landscape", "city",
    "street", "house", "tree", "trees", "flower", "flowers", "sky", "sea", "river", "mountain", "mountains",
    "forest", "garden", "beach", "sunset", "night", "day", "red", "blue", "green", "yellow", "black", "white",
    "man", "woman", "person", "people", "child", "girl", "boy", "face", "nude", "naked", "body", "violence",
    "blood", "gun", "weapon", "sexual", "hate", "harassment", "shocking", "illegal", "activity", "self",
    "harm", "nudity", "van", "gogh", "picasso", "monet", "car", "cat", "dog", "bird", "horse", "apple",
    "banana", "table", "chair", "room", "window", "cloud", "clouds", "rain", "snow", "water", "fire", "light",
    "dark", "beautiful", "detailed", "old", "new", "small", "big", "cartoon", "anime", "realistic", "oil",
    "watercolor", "sketch",
)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode table (the GPT-2 scheme)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def tiny_words() -> list[str]:
    """The tiny vocabulary's whole words (the tiny T5 tokenizer uses them too), longest first."""
    words: set[str] = set(_COMMON_WORDS)
    names = data_file("names.json")
    for group in json.loads(names.read_text()).values():
        for name in group:
            words.update(name.lower().replace("_", " ").replace("-", " ").split())
    # longest words first: their merges rank first, so a short word's merge cannot split them
    return sorted((w for w in words if w.isascii()), key=lambda w: (-len(w), w))


@functools.lru_cache(maxsize=1)
def tiny_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Build the tiny tokenizer's vocabulary and BPE merges (deterministic)."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    seen: set[str] = set()
    for word in tiny_words():
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right until the word is one token
            pair = f"{parts[0]} {parts[1]}"
            merged = parts[0] + parts[1]
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            parts = [merged, *parts[2:]]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return vocab, merges


def build_tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab_and_merges()
    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=77)


def build_tiny_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    return AutoencoderKL(**VAE_CONFIG).eval()


def tiny_clip_config(**overrides: Any):
    """A CLIPTextConfig over the tiny tokenizer's vocabulary (TEXT_CONFIG, with `overrides`):
    the other families' tiny CLIP encoders (e.g. a wider CLIP-G) differ only in sizes."""
    from transformers import CLIPTextConfig

    vocab, _ = tiny_vocab_and_merges()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        **{**TEXT_CONFIG, **overrides},
    )


def build_tiny_text_encoder(seed: int = 0):
    import torch
    from transformers import CLIPTextModel

    config = tiny_clip_config()
    torch.manual_seed(seed + 2)
    return CLIPTextModel(config).eval()


def build_tiny_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)




def save_tiny(pipeline: Any, path: str | Path) -> Path:
    """Write a tiny pipeline (any family's `build_tiny_*_pipeline()`) as a diffusers folder, what a
    downloaded model looks like: the tests load models from such folders."""
    path = Path(path)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path
