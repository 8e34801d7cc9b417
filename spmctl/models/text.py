"""Text embeddings as SD sees them, with clip_skip honoured."""

from __future__ import annotations

from typing import Any


def tokenize(tokenizer: Any, prompts: list[str]):
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def warn_truncated(tokenizer: Any, texts: list[str], warn: Any) -> None:
    """The text encoder reads `model_max_length` tokens (77 with start and end); say once per
    prompt what a longer one loses, instead of dropping it silently."""
    limit = tokenizer.model_max_length - 2
    for text in dict.fromkeys(t for t in texts if t):
        ids = tokenizer(text, truncation=False, add_special_tokens=False).input_ids
        if len(ids) > limit:
            dropped = tokenizer.decode(ids[limit:]).strip()
            warn(f"prompt {_short(text)!r} is {len(ids)} tokens; the text encoder reads {limit}, "
                 f"so {len(ids) - limit} are dropped: {_short(dropped, 200)!r}")


def _short(text: str, keep: int = 60) -> str:
    """At most `keep` characters, keeping both ends (a prompt's end is what truncation loses)."""
    if len(text) <= keep:
        return text
    head = (keep - 3) * 2 // 3
    return text[:head] + "..." + text[len(text) - (keep - 3 - head):]


def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: list[str], clip_skip: int = 1):
    """The text encoder's last hidden state (77 × d per prompt), or the `clip_skip`-th last layer
    passed through the final layer norm (how A1111/kohya and the original SPM code define it)."""
    import torch

    ids = tokenize(tokenizer, prompts).to(text_encoder.device)
    with torch.no_grad():
        if clip_skip <= 1:
            return text_encoder(ids)[0]
        out = text_encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[-clip_skip]
        # transformers < 5 nests the layers under .text_model; 5.x has them on the model
        final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        return final_norm(hidden)
