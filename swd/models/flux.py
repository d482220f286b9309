"""Adapter over diffusers' FluxTransformer2DModel.

FLUX takes latents packed into 2x2 patches as a token sequence, with RoPE position ids per
token. Scale-wise sampling changes the latent size every step, so ids are rebuilt from the
current h, w at every call; latents are packed on the way in and unpacked on the way out, so
the sampler upsamples ordinary (B, C, H, W) tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from swd.models.base import Adapter, TextCondition, check_block_index

PACK = 2  # FLUX packs 2x2 latent pixels into one token


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C), channel-major within each 2x2 patch."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // PACK, PACK, w // PACK, PACK)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PACK) * (w // PACK), c * PACK * PACK)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of pack_latents for a latent of size height x width."""
    b, _, d = tokens.shape
    c = d // (PACK * PACK)
    x = tokens.view(b, height // PACK, width // PACK, c, PACK, PACK)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def image_position_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """RoPE ids (H/2 * W/2, 3): (0, row, column) of every packed token, row-major."""
    rows = torch.arange(height // PACK, device=device, dtype=dtype)
    cols = torch.arange(width // PACK, device=device, dtype=dtype)
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    ids = torch.stack([torch.zeros_like(grid_r), grid_r, grid_c], dim=-1)
    return ids.reshape(-1, 3)


class FluxAdapter(Adapter):
    """Velocity and block features of a FLUX transformer on unpacked (B, C, H, W) latents.

    guidance: the embedded guidance of FLUX-dev-style models (ignored by models without a
    guidance embedding). SwD's FLUX-dev students keep the teacher's 4.5.
    Blocks are numbered double-stream first, then single-stream.
    """

    patch_name = "packing size"

    def __init__(self, transformer: nn.Module, guidance: float = 4.5):
        super().__init__(transformer)
        self.guidance = guidance

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels // (PACK * PACK)

    @property
    def patch_size(self) -> int:
        return PACK * self.config.patch_size

    @property
    def max_latent_size(self) -> int | None:
        return None  # RoPE has no fixed table

    @property
    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks) + len(self.transformer.single_transformer_blocks)

    def block(self, index: int) -> nn.Module:
        index = check_block_index(index, self.num_blocks)
        n_double = len(self.transformer.transformer_blocks)
        if index < n_double:
            return self.transformer.transformer_blocks[index]
        return self.transformer.single_transformer_blocks[index - n_double]

    def _run(self, x, sigma, cond: TextCondition) -> torch.Tensor:
        b, _, h, w = x.shape
        # FLUX multiplies timestep and guidance by 1000 inside its forward: pass sigma itself.
        timestep = sigma.to(x.dtype)
        guidance = None
        if self.config.guidance_embeds:
            guidance = torch.full((b,), float(self.guidance), device=x.device, dtype=x.dtype)
        text_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=x.device, dtype=x.dtype)
        out = self.transformer(
            hidden_states=pack_latents(x),
            encoder_hidden_states=cond.prompt_embeds,
            pooled_projections=cond.pooled,
            timestep=timestep,
            img_ids=image_position_ids(h, w, device=x.device, dtype=x.dtype),
            txt_ids=text_ids,
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)
