"""Adapter over diffusers' SD3Transformer2DModel (SD3, SD3.5 and the testbed's small MMDiT)."""

from __future__ import annotations

import torch
from torch import nn

from swd.errors import SwdError
from swd.models.base import Adapter, TextCondition, check_block_index, sigma_vector


class SD3Adapter(Adapter):
    """Velocity and block features of an SD3-family transformer on (B, C, H, W) latents.

    SD3 crops its fixed sin-cos position table to the current size, so any size that is a
    multiple of the patch size, up to pos_embed_max_size * patch_size, works unchanged.
    """

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def max_latent_size(self) -> int | None:
        max_pos = self.config.pos_embed_max_size
        return None if max_pos is None else max_pos * self.patch_size

    @property
    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    def block(self, index: int) -> nn.Module:
        return self.transformer.transformer_blocks[check_block_index(index, self.num_blocks)]

    def check_latents(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.latent_channels:
            raise SwdError(
                f"latents: expected (B, {self.latent_channels}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise SwdError(f"latents: size {h}x{w} is not divisible by the patch size {self.patch_size}")
        limit = self.max_latent_size
        if limit is not None and (h > limit or w > limit):
            raise SwdError(f"latents: size {h}x{w} exceeds the model's largest latent side {limit}")

    def _run(self, x, sigma, cond: TextCondition) -> torch.Tensor:
        self.check_latents(x)
        cond = cond.expand_to(x.shape[0])
        # SD3 is conditioned on timestep = 1000 * sigma.
        timestep = sigma_vector(sigma, x.shape[0], x.device) * 1000.0
        return self.transformer(
            hidden_states=x,
            encoder_hidden_states=cond.prompt_embeds,
            pooled_projections=cond.pooled,
            timestep=timestep,
            return_dict=False,
        )[0]
