"""Adapter over diffusers' SD3Transformer2DModel (SD3, SD3.5 and the testbed's small MMDiT)."""

from __future__ import annotations

import torch
from torch import nn

from swd.errors import SwdError
from swd.models.base import FeatureCapture, TextCondition, check_block_index, sigma_vector


class SD3Adapter(nn.Module):
    """Velocity and block features of an SD3-family transformer on (B, C, H, W) latents.

    SD3 crops its fixed sin-cos position table to the current size, so any size that is a
    multiple of the patch size, up to pos_embed_max_size * patch_size, works unchanged.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        self._capture = FeatureCapture()

    @property
    def config(self):
        return self.transformer.config

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels

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

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

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

    def forward(self, x: torch.Tensor, sigma, cond: TextCondition) -> torch.Tensor:
        """Velocity v ~ eps - x0, shape of x."""
        return self._run(x, sigma, cond)

    def velocity_and_features(self, x, sigma, cond: TextCondition, block: int):
        """(velocity, image tokens after `block`: (B, T, C)) from one forward pass."""
        target = self.block(block)
        with self._capture.capturing(target, stop=False) as cap:
            v = self._run(x, sigma, cond)
        return v, cap.features

    def features(self, x, sigma, cond: TextCondition, block: int) -> torch.Tensor:
        """Image tokens after `block`, (B, T, C); the blocks after it are not run."""
        target = self.block(block)
        with self._capture.capturing(target, stop=True) as cap:
            self._run(x, sigma, cond)
        return cap.features
