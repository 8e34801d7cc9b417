"""Prompts with adversarial token slots, and the text encoder run on chosen token embeddings.

Adversarial tokens are drawn from *words*: vocabulary entries that are a whole lowercase word
(`cat</w>`) and that the tokenizer turns back into exactly that one token. A prompt made of such
words and the original prompt's words, joined by spaces, therefore tokenises to exactly the tokens
the attack found: the adversarial prompt is real text a user can paste into `spmctl sample`.
(The references decode arbitrary token ids, and the text they print often tokenises differently.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, SpmctlError

_WORD = re.compile(r"^[a-z]{2,}</w>$")


@dataclass
class WordVocab:
    """The candidate tokens: ids (W,) into the tokenizer's vocabulary, and their text."""

    ids: torch.Tensor
    words: list[str]

    def __len__(self) -> int:
        return len(self.words)


def word_vocab(tokenizer: Any) -> WordVocab:
    vocab = tokenizer.get_vocab()
    candidates = sorted((i, tok[:-4]) for tok, i in vocab.items() if _WORD.match(tok))
    if not candidates:
        raise SpmctlError("the tokenizer has no whole-word tokens to build adversarial prompts from")
    words = [w for _, w in candidates]
    encoded = tokenizer(words, add_special_tokens=False).input_ids
    keep = [(i, w) for (i, w), got in zip(candidates, encoded, strict=True) if got == [i]]
    return WordVocab(torch.tensor([i for i, _ in keep]), [w for _, w in keep])


@dataclass
class Layout:
    """One prompt as words and adversarial slots: `items[j]` is a word (str) or a slot number (int)."""

    items: list[str | int]
    slots: int

    def text(self, chosen: Sequence[str]) -> str:
        return " ".join(chosen[i] if isinstance(i, int) else i for i in self.items)


def layout(prompt: str, mode: str, tokens: int, every: int = 3) -> Layout:
    """`prefix`: k slots before the prompt (UnlearnDiffAtk); `only`: k slots alone (P4D-N,
    Ring-A-Bell); `insert`: a slot before every `every` words of the prompt (P4D-K)."""
    words = prompt.split()
    if mode == "prefix":
        return Layout([*range(tokens), *words], tokens)
    if mode == "only":
        return Layout(list(range(tokens)), tokens)
    if mode == "insert":
        items: list[str | int] = []
        for n, start in enumerate(range(0, max(len(words), 1), every)):
            items += [n, *words[start : start + every]]
        return Layout(items, sum(isinstance(i, int) for i in items))
    raise ValueError(f"unknown layout {mode!r}")


class SlotPrompts:
    """A batch of layouts as padded token ids with a mask of the adversarial positions.

    Each word is tokenised on its own: CLIP's tokenizer never merges across spaces, so the
    concatenation equals the tokenisation of the joined text (checked in `check_roundtrip`).
    """

    def __init__(self, tokenizer: Any, layouts: Sequence[Layout], labels: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.layouts = list(layouts)
        limit = tokenizer.model_max_length
        rows, masks = [], []
        for lay, label in zip(layouts, labels, strict=True):
            ids, mask = [tokenizer.bos_token_id], [False]
            for item in lay.items:
                piece = [0] if isinstance(item, int) else tokenizer(item, add_special_tokens=False).input_ids
                ids += piece
                mask += [isinstance(item, int)] * len(piece)
            ids.append(tokenizer.eos_token_id)
            mask.append(False)
            if len(ids) > limit:
                raise ConfigError(
                    f"{label}: {len(ids)} tokens with the {lay.slots} adversarial ones, over the text "
                    f"encoder's limit of {limit}; shorten the prompt or use fewer tokens"
                )
            pad = limit - len(ids)
            rows.append(ids + [tokenizer.pad_token_id] * pad)
            masks.append(mask + [False] * pad)
        self.ids = torch.tensor(rows)
        self.mask = torch.tensor(masks)

    def subset(self, rows: Sequence[int]) -> SlotPrompts:
        """The prompts at `rows`, in that order."""
        out = object.__new__(SlotPrompts)
        out.tokenizer = self.tokenizer
        out.layouts = [self.layouts[r] for r in rows]
        out.ids, out.mask = self.ids[list(rows)], self.mask[list(rows)]
        return out

    def with_tokens(self, chosen: torch.Tensor) -> torch.Tensor:
        """Token ids with `chosen` (B, K) vocabulary ids in the slots."""
        ids = self.ids.clone()
        for b, lay in enumerate(self.layouts):
            ids[b, self.mask[b]] = chosen[b, : lay.slots].cpu()
        return ids

    def texts(self, chosen: torch.Tensor) -> list[str]:
        decoded = [[self.tokenizer.convert_ids_to_tokens(int(i))[:-4] for i in row] for row in chosen]
        return [lay.text(words) for lay, words in zip(self.layouts, decoded, strict=True)]

    def check_roundtrip(self, chosen: torch.Tensor) -> list[str]:
        """The prompts' text, after checking each tokenises back to the ids optimised."""
        from ..models.text import tokenize

        texts = self.texts(chosen)
        ids = self.with_tokens(chosen)
        if not torch.equal(tokenize(self.tokenizer, texts), ids):  # a bug here would report a fake attack
            raise SpmctlError("internal error: an adversarial prompt does not tokenise to the tokens found")
        return texts


def encode_with_slots(text_encoder: Any, ids: torch.Tensor, mask: torch.Tensor, slot_embeds: torch.Tensor):
    """Last hidden state of `ids` with the token embeddings at `mask` replaced by `slot_embeds`
    ((number of True in mask, d), differentiable). A hook on the embedding table does the swap, so
    the encoder runs unchanged (its causal mask, positions and final norm)."""
    table = text_encoder.get_input_embeddings()
    device = table.weight.device
    mask = mask.to(device)

    def swap(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[mask] = slot_embeds.to(out.dtype)
        return out

    handle = table.register_forward_hook(swap)
    try:
        return text_encoder(ids.to(device))[0]
    finally:
        handle.remove()


def project(embeds: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Nearest vocabulary entry of each row by cosine similarity (PEZ's projection): indices into `table`."""
    a = torch.nn.functional.normalize(embeds.float(), dim=-1)
    b = torch.nn.functional.normalize(table.float(), dim=-1)
    return (a @ b.T).argmax(dim=-1)
