"""Pieces the trainers share: data with cached text embeddings, devices, EMA, resizing.

Training data, for the distillation trainer, is any object with
  - `train_images`: len(), `.shape` (N, 3, H, W) and `[idx]` -> float images (B, 3, H, W) in [-1, 1];
  - `train_condition(idx)`, `empty_condition()`, `heldout_condition(n)` -> TextCondition;
  - `heldout_captions`: list[str] (labels of the sample grids).
`CaptionedData` (the testbed sets with MiniLM embeddings, held in memory) and
`swd.data.prompts.PromptEmbeddingData` (images + SD3/FLUX prompt embeddings precomputed by
`swd data encode-prompts`, read lazily from disk) both provide it; `load_training_data` picks one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from swd.errors import SwdError
from swd.models.base import TextCondition
# The trainers' runtime helpers live on the ground floor; imported here for the trainers' use.
from swd.runtime import autocast_context, ema_update, pick_device, resize_area  # noqa: F401


@dataclass
class CaptionedData:
    """Training images with their captions' MiniLM embeddings, plus held-out prompts."""

    train_images: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    train_caption_index: torch.Tensor  # (N,) index into the unique-caption embeddings
    caption_states: torch.Tensor  # (U, T, 384)
    caption_pooled: torch.Tensor  # (U, 384)
    empty_states: torch.Tensor  # (1, T, 384): the empty prompt, for CFG
    empty_pooled: torch.Tensor  # (1, 384)
    heldout_captions: list[str]
    heldout_states: torch.Tensor  # (H, T, 384)
    heldout_pooled: torch.Tensor
    heldout_images: torch.Tensor  # (H, 3, S, S): one reference image per held-out prompt
    train_captions: list[str]

    def empty_condition(self) -> TextCondition:
        return TextCondition(self.empty_states, self.empty_pooled)

    def train_condition(self, idx: torch.Tensor, drop_prob: float = 0.0) -> TextCondition:
        """Captions of images `idx`; each replaced by the empty prompt with prob drop_prob."""
        u = self.train_caption_index[idx]
        states, pooled = self.caption_states[u].clone(), self.caption_pooled[u].clone()
        if drop_prob > 0:
            drop = torch.rand(len(idx)) < drop_prob
            states[drop] = self.empty_states
            pooled[drop] = self.empty_pooled
        return TextCondition(states, pooled)

    def heldout_condition(self, n: int, offset: int = 0) -> TextCondition:
        sl = slice(offset, offset + n)
        return TextCondition(self.heldout_states[sl], self.heldout_pooled[sl])


def cooldown_factor(step: int, start: int, steps: int) -> float:
    """The lr multiplier of a linear cool-down: 1 before `start`, then down to 0 over `steps`
    (0 steps = no cool-down). A function of the step alone, so resuming needs no scheduler state."""
    if steps <= 0 or step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / steps)


def _unique_first(captions: list[str]) -> list[int]:
    seen, keep = set(), []
    for i, c in enumerate(captions):
        if c not in seen:
            seen.add(c)
            keep.append(i)
    return keep


TRAINING_SETS = ("emoji", "shapes", "embeddings")


def load_training_data(name: str, path: str | None = None, text_tokens: int = 16):
    """A testbed set (emoji, shapes; MiniLM text) or a precomputed prompt-embeddings file (embeddings)."""
    if name == "embeddings":
        from swd.data.prompts import load_prompt_embeddings

        if not path:
            raise SwdError("data.path: the embeddings set needs the file or folder of `swd data encode-prompts`")
        return load_prompt_embeddings(path)
    if name not in TRAINING_SETS:
        raise SwdError(f"data.name: unknown {name!r}; choose one of {', '.join(TRAINING_SETS)}")
    return load_testbed_data(name, path, text_tokens)


def load_testbed_data(name: str, path: str | None = None, text_tokens: int = 16) -> CaptionedData:
    """Load a testbed image set and embed its captions with MiniLM (cached on disk)."""
    from swd.data.text import encode_captions

    if name == "emoji":
        from swd.data.emoji import load_emoji

        full = load_emoji(path)
    elif name == "shapes":
        from swd.data.shapes import load_shapes

        full, _ = load_shapes(path)
    else:
        raise SwdError(f"data.name: unknown {name!r}; choose emoji or shapes")
    train, held = full.select("train"), full.select("heldout")
    if len(train) == 0:
        raise SwdError(f"data: the {name} set has no training images")
    train_caps = train.captions
    unique = sorted(set(train_caps))
    position = {c: i for i, c in enumerate(unique)}
    emb = encode_captions(unique, max_length=text_tokens)
    empty = encode_captions([""], max_length=text_tokens)
    keep = _unique_first(held.captions)
    held_caps = [held.captions[i] for i in keep]
    held_emb = encode_captions(held_caps, max_length=text_tokens) if held_caps else emb
    held_images = held.tensors()[keep] if held_caps else train.tensors()[:0]
    return CaptionedData(
        train_images=train.tensors(),
        train_caption_index=torch.tensor([position[c] for c in train_caps]),
        caption_states=emb.states.float(),
        caption_pooled=emb.pooled.float(),
        empty_states=empty.states.float(),
        empty_pooled=empty.pooled.float(),
        heldout_captions=held_caps,
        heldout_states=held_emb.states.float(),
        heldout_pooled=held_emb.pooled.float(),
        heldout_images=held_images,
        train_captions=train_caps,
    )


def check_patterns(patterns, where: str) -> None:
    """A list of regular expressions (parameter-name patterns), each one compiling."""
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) and p for p in patterns):
        raise SwdError(f"{where}: expected a list of regular expressions, got {patterns!r}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise SwdError(f"{where}: {pattern!r} is not a regular expression ({e})") from None
