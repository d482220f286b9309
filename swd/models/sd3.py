"""Adapter over diffusers' SD3Transformer2DModel (SD3, SD3.5 and the testbed's small MMDiT)."""

from __future__ import annotations

import torch
from torch import nn

from swd.models.base import Adapter, TextCondition, check_block_index


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

    def _run(self, x, sigma, cond: TextCondition) -> torch.Tensor:
        return self.transformer(
            hidden_states=x,
            encoder_hidden_states=cond.prompt_embeds,
            pooled_projections=cond.pooled,
            timestep=sigma * 1000.0,  # SD3 is conditioned on timestep = 1000 * sigma
            return_dict=False,
        )[0]
