"""The testbed's small text-to-image MMDiT: a diffusers SD3Transformer2DModel in pixel space.

Pixel space (3 channels, no VAE) keeps the testbed cheap while exercising SD3's real code
paths: joint attention, cropped sin-cos positions at every scale, pooled text conditioning.
Text comes from MiniLM (384-dim token states; the masked mean as the pooled vector).
"""

from __future__ import annotations

from dataclasses import dataclass

from swd.errors import SwdError


@dataclass
class MMDiTConfig:
    sample_size: int = 64  # largest image side, pixels
    patch_size: int = 2
    width: int = 256  # = heads * head_dim
    head_dim: int = 64
    depth: int = 8
    text_dim: int = 384  # MiniLM hidden size

    def transformer_kwargs(self) -> dict:
        if self.width % self.head_dim:
            raise SwdError(f"model.width: {self.width} must be a multiple of model.head_dim {self.head_dim}")
        if self.sample_size % self.patch_size:
            raise SwdError(f"model.sample_size: {self.sample_size} must be a multiple of model.patch_size")
        return dict(
            sample_size=self.sample_size,
            patch_size=self.patch_size,
            in_channels=3,
            out_channels=3,
            num_layers=self.depth,
            attention_head_dim=self.head_dim,
            num_attention_heads=self.width // self.head_dim,
            joint_attention_dim=self.text_dim,
            caption_projection_dim=self.width,
            pooled_projection_dim=self.text_dim,
            pos_embed_max_size=self.sample_size // self.patch_size,
        )


def build_testbed_transformer(cfg: MMDiTConfig):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**cfg.transformer_kwargs())
