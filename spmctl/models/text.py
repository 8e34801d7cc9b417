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
