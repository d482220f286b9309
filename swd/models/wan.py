"""Adapter over diffusers' WanTransformer3DModel (Wan2.1 text-to-video).

Wan takes latents (B, C, F, H, W), a timestep (B,) and UMT5 token states (B, L, text_dim); it has
no pooled text vector, so `TextCondition.pooled` is carried along and ignored. Its 3-D RoPE is
sliced from the input's (frames, h, w) on every forward, so a changing grid needs nothing rebuilt.
Wan2.1 is a flow-matching model on the same convention as SD3 (timestep = 1000 * sigma, output
v ~ eps - x0). Features: the tokens (B, F'H'W', C) a block returns, read by a forward hook.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from swd.errors import SwdError
from swd.models.base import Adapter, TextCondition, check_block_index


class WanAdapter(Adapter):
    """Velocity and block features of a Wan transformer on (B, C, F, H, W) latents."""

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """(t, h, w): a tuple marks a video model for `ScaleSchedule.check_model`."""
        return tuple(int(p) for p in self.config.patch_size)

    @property
    def max_latent_size(self) -> tuple[int, int, int]:
        """RoPE tables hold rope_max_seq_len positions per axis (in patches)."""
        return tuple(self.config.rope_max_seq_len * p for p in self.patch_size)

    @property
    def num_blocks(self) -> int:
        return len(self.transformer.blocks)

    def feature_width(self, index: int) -> int:
        check_block_index(index, self.num_blocks)
        return self.config.num_attention_heads * self.config.attention_head_dim

    def block(self, index: int) -> nn.Module:
        return self.transformer.blocks[check_block_index(index, self.num_blocks)]

    def tokens(self, size) -> int:
        """Tokens of one sample at latent size (frames, h, w)."""
        return math.prod(v // p for v, p in zip(size, self.patch_size))

    def check_latents(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.latent_channels:
            raise SwdError(f"latents: expected (B, {self.latent_channels}, F, H, W), got {tuple(x.shape)}")
        size = tuple(x.shape[2:])
        for axis, v, p, m in zip(("frames", "height", "width"), size, self.patch_size, self.max_latent_size):
            if v % p:
                raise SwdError(f"latents: {axis} {v} is not divisible by the patch size {p}")
            if v > m:
                raise SwdError(f"latents: {axis} {v} exceeds the model's largest {m}")

    def _run(self, x, sigma, cond: TextCondition) -> torch.Tensor:
        return self.transformer(
            hidden_states=x,
            timestep=sigma * 1000.0,
            encoder_hidden_states=cond.prompt_embeds,
            return_dict=False,
        )[0]
