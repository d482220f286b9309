"""Adapter over diffusers' UNet2DConditionModel (the testbed's convolutional teacher; SD-family UNets).

The UNet sees the text through cross-attention to the token states (`prompt_embeds`); the pooled
vector is used when the UNet was built to take it: as a class embedding
(`class_embed_type="projection"`, the testbed) or, for SDXL (`addition_embed_type="text_time"`),
as the added text embedding beside the six time ids (original size, crop top-left, target size).
Its blocks, in the order the forward runs them, are down_blocks + [mid_block] + up_blocks, so the
middle block index is the mid block for a symmetric UNet.

prediction "flow" (the testbed) returns velocity; "epsilon" / "v_prediction" (SD1.5, SDXL) return
the UNet's own output, and `adapter.process` (a `swd.processes.DDPMProcess`) turns it into x0 and
gives the forward process. Either way the sampler calls `process.x0(x, sigma, output)`.
"""

from __future__ import annotations

import torch
from torch import nn

from swd.errors import SwdError
from swd.models.base import Adapter, FeatureCapture, TextCondition, check_block_index
from swd.processes import FLOW, DDPMProcess, sdxl_process

PREDICTIONS = ("flow", "epsilon", "v_prediction")
ADDED_CONDITIONS = (None, "text_time")  # "text_time": SDXL's pooled text + time ids
TIME_IDS = 6  # SDXL: original (h, w), crop (top, left), target (h, w)


def sdxl_time_ids(height: int, width: int, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """SDXL's micro-conditions for an uncropped image of (height, width) px: (B, 6)."""
    row = torch.tensor([height, width, 0, 0, height, width], dtype=dtype, device=device)
    return row.expand(batch, TIME_IDS)


def default_prediction(unet) -> str:
    """What a UNet predicts when nobody says: SDXL-layout UNets (added 'text_time' conditions)
    predict epsilon, as SDXL base does; the testbed's UNets are rectified-flow models. A
    v-prediction SDXL needs prediction= (the pipeline reads its scheduler's config)."""
    return "epsilon" if unet.config.addition_embed_type == "text_time" else "flow"


class _UNetCapture(FeatureCapture):
    """A down block returns (hidden_states, skip states): its features are the first item."""

    def hook(self, module: nn.Module, inputs, output):
        if isinstance(output, tuple):
            output = output[0]
        return super().hook(module, inputs, output)


class UNetAdapter(Adapter):
    """Velocity and block features of a UNet2DConditionModel on (B, C, H, W) latents.

    A UNet is fully convolutional: any size divisible by its total downsampling factor
    2 ** (levels - 1) works, so that factor plays the role of the patch size. Its prediction is a
    velocity v ~ eps - x0 for flow UNets, else eps or v (`self.process.x0` gives the clean
    estimate for either); block features are (B, C, H, W) maps read as (B, HW, C) tokens.
    """

    network_name = "unet"
    patch_name = "UNet's downsampling factor"

    def __init__(self, unet: nn.Module, prediction: str | None = None, process: DDPMProcess | None = None,
                 vae_scale_factor: int = 8):
        super().__init__(unet, _UNetCapture())
        prediction = default_prediction(unet) if prediction is None else prediction
        if prediction not in PREDICTIONS:
            raise SwdError(f"prediction: {prediction!r} is not supported for UNets; supported: "
                           f"{', '.join(PREDICTIONS)}")
        extra = unet.config.addition_embed_type
        if extra not in ADDED_CONDITIONS:
            raise SwdError(f"model: UNets with addition_embed_type={extra!r} are not supported "
                           "(only none and SDXL's 'text_time')")
        if prediction == "flow":
            if process is not None and process is not FLOW:
                raise SwdError("process: a flow-prediction UNet takes the flow process")
            process = FLOW
        elif process is None:
            process = sdxl_process(prediction)
        elif getattr(process, "prediction", None) != prediction:
            raise SwdError(f"process: predicts {getattr(process, 'prediction', 'flow')!r}, the UNet {prediction!r}")
        self.prediction = prediction
        self.process = process
        # Pixels per latent pixel: SDXL's time ids are in image pixels.
        self.vae_scale_factor = vae_scale_factor

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

    def feature_width(self, index: int) -> int:
        """Channels C of the tokens (B, HW, C) block `index` outputs: each down block and the mid
        block end at their level's width, up blocks climb back through the levels in reverse."""
        widths = list(self.config.block_out_channels)
        per_block = [*widths, widths[-1], *reversed(widths)]
        return per_block[check_block_index(index, self.num_blocks)]

    def block(self, index: int) -> nn.Module:
        return self.blocks[check_block_index(index, self.num_blocks)]

    def added_conditions(self, x: torch.Tensor, cond: TextCondition) -> dict | None:
        """SDXL's added_cond_kwargs: the pooled text and the time ids (given, or an uncropped image of
        the current latent size times the VAE factor, so every scale sees its own size)."""
        if self.config.addition_embed_type != "text_time":
            return None
        time_ids = cond.time_ids
        if time_ids is None:
            h, w = x.shape[-2:]
            time_ids = sdxl_time_ids(h * self.vae_scale_factor, w * self.vae_scale_factor, x.shape[0], x.device)
        return {"text_embeds": cond.pooled, "time_ids": time_ids.to(x.device)}

    def _run(self, x, sigma, cond: TextCondition) -> torch.Tensor:
        # Flow: timestep = 1000 * sigma (as the SD3 adapter); DDPM: the integer timestep of sigma.
        timestep = self.process.timestep(sigma).to(x.device)
        class_labels = cond.pooled if self.config.class_embed_type == "projection" else None
        return self.unet(
            x,
            timestep,
            encoder_hidden_states=cond.prompt_embeds,
            class_labels=class_labels,
            added_cond_kwargs=self.added_conditions(x, cond),
            return_dict=False,
        )[0]

    @staticmethod
    def _tokens(features: torch.Tensor) -> torch.Tensor:
        return features.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
