"""Adapter over diffusers' UNet2DConditionModel (the testbed's convolutional teacher; SD-family UNets).

The UNet sees the text through cross-attention to the token states (`prompt_embeds`); the pooled
vector is used only when the UNet was built to take it (`class_embed_type="projection"`). Its
blocks, in the order the forward runs them, are down_blocks + [mid_block] + up_blocks, so the
middle block index is the mid block for a symmetric UNet.
"""

from __future__ import annotations

import torch
from torch import nn

from swd.errors import SwdError
from swd.models.base import FeatureCapture, TextCondition, check_block_index, sigma_vector

PREDICTIONS = ("flow",)  # epsilon / v-prediction UNets (SD1.5, SDXL) are issue 14


class _UNetCapture(FeatureCapture):
    """A down block returns (hidden_states, skip states): its features are the first item."""

    def hook(self, module: nn.Module, inputs, output):
        if isinstance(output, tuple):
            output = output[0]
        return super().hook(module, inputs, output)


class UNetAdapter(nn.Module):
    """Velocity and block features of a UNet2DConditionModel on (B, C, H, W) latents.

    A UNet is fully convolutional: any size divisible by its total downsampling factor
    2 ** (levels - 1) works, so that factor plays the role of the patch size.
    """

    def __init__(self, unet: nn.Module, prediction: str = "flow"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise SwdError(f"prediction: {prediction!r} is not supported for UNets yet; supported: "
                           f"{', '.join(PREDICTIONS)}")
        extra = unet.config.addition_embed_type
        if extra is not None:
            # SDXL-style added conditioning needs time ids and a second text encoder: not wired.
            raise SwdError(f"model: UNets with addition_embed_type={extra!r} are not supported")
        self.unet = unet
        self.prediction = prediction
        self._capture = _UNetCapture()

    @property
    def config(self):
        return self.unet.config

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels

    @property
    def patch_size(self) -> int:
        return 2 ** (len(self.unet.down_blocks) - 1)

    @property
    def max_latent_size(self) -> int | None:
        return None

    @property
    def blocks(self) -> list[nn.Module]:
        return [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def feature_width(self, index: int) -> int:
        """Channels C of the tokens (B, HW, C) block `index` outputs: each down block and the mid
        block end at their level's width, up blocks climb back through the levels in reverse."""
        widths = list(self.config.block_out_channels)
        per_block = [*widths, widths[-1], *reversed(widths)]
        return per_block[check_block_index(index, self.num_blocks)]

    def block(self, index: int) -> nn.Module:
        return self.blocks[check_block_index(index, self.num_blocks)]

    def check_latents(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.latent_channels:
            raise SwdError(
                f"latents: expected (B, {self.latent_channels}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise SwdError(f"latents: size {h}x{w} is not divisible by the UNet's downsampling "
                           f"factor {self.patch_size}")

    def _run(self, x, sigma, cond: TextCondition) -> torch.Tensor:
        self.check_latents(x)
        cond = cond.expand_to(x.shape[0])
        # Same convention as the SD3 adapter: timestep = 1000 * sigma.
        timestep = sigma_vector(sigma, x.shape[0], x.device) * 1000.0
        class_labels = cond.pooled if self.config.class_embed_type == "projection" else None
        return self.unet(
            x,
            timestep,
            encoder_hidden_states=cond.prompt_embeds,
            class_labels=class_labels,
            return_dict=False,
        )[0]

    def forward(self, x: torch.Tensor, sigma, cond: TextCondition) -> torch.Tensor:
        """Velocity v ~ eps - x0, shape of x."""
        return self._run(x, sigma, cond)

    @staticmethod
    def _tokens(features: torch.Tensor) -> torch.Tensor:
        return features.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)

    def velocity_and_features(self, x, sigma, cond: TextCondition, block: int):
        """(velocity, tokens after `block`: (B, HW, C)) from one forward pass."""
        target = self.block(block)
        with self._capture.capturing(target, stop=False) as cap:
            v = self._run(x, sigma, cond)
        return v, self._tokens(cap.features)

    def features(self, x, sigma, cond: TextCondition, block: int) -> torch.Tensor:
        """Tokens after `block`, (B, HW, C); the blocks after it are not run."""
        target = self.block(block)
        with self._capture.capturing(target, stop=True) as cap:
            self._run(x, sigma, cond)
        return self._tokens(cap.features)
