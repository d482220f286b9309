"""Spatio-temporal scale-wise sampling pipeline for Wan2.1 text-to-video students.

`SwDWanPipeline` is diffusers' `WanPipeline` with a scale-wise `__call__`: prompts are encoded by
diffusers' own UMT5 `encode_prompt` (the pipeline is a subclass), the latents come from
`swd.sampling.sample_scalewise` driven by a `WanAdapter` over a video schedule ((frames, h, w)
latent scales), and the causal VAE decodes the last scale into 4 (frames - 1) + 1 pixel frames
of 8 h x 8 w.

    pipe = SwDWanPipeline.from_pretrained("path/to/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16)
    frames = pipe("a red star moving right", schedule="wan-4").frames[0]   # (81, 480, 832, 3)
    swd.video.save_video(frames, "star.gif", fps=16)

Students run without classifier-free guidance (guidance_scale=1); > 1 batches the negative (by
default empty) prompt through `swd.sampling.guided`, as the teacher does.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from swd.errors import SwdError
from swd.models.base import TextCondition
from swd.models.wan import WanAdapter
from swd.pipelines.common import (
    SwDPipelineMixin,
    ScheduleArg,
    check_choice,
    check_count,
    check_generator,
    check_guidance,
    check_latents,
    check_max_sequence_length,
    check_vae_channels,
    describe,
    prompt_count,
    prompt_denoiser,
    unwrap_transformer,
)
from swd.sampling import TIME_MODES, UPSAMPLE_MODES
from swd.schedules import ScaleSchedule

PromptArg = Optional[Union[str, list[str]]]
VIDEO_OUTPUT_TYPES = ("np", "pil", "pt", "latent")
MAX_SEQUENCE_LENGTH = 512  # UMT5 tokens Wan2.1 was trained with


def _check_embeds(name: str, embeds, width: int) -> None:
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
        raise SwdError(f"{name}: expected a (B, L, {width}) tensor, got {describe(embeds)}")
    if embeds.shape[-1] != width:
        raise SwdError(f"{name}: last dimension {embeds.shape[-1]} does not match the transformer's text_dim {width}")


class SwDWanPipeline(SwDPipelineMixin, WanPipeline):
    """Few-step spatio-temporal scale-wise text-to-video generation with a Wan2.1 student.

    Components are those of `WanPipeline`; the UMT5 encoder and tokenizer are optional (without
    them pass `prompt_embeds`), and `scheduler` is unused, kept so a standard Wan folder loads.
    """

    default_schedule = "wan-4"
    _optional_components = ["scheduler", "text_encoder", "tokenizer", "transformer_2"]

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae: AutoencoderKLWan,
        text_encoder=None,
        tokenizer=None,
        scheduler: FlowMatchEulerDiscreteScheduler = None,
        transformer_2=None,
        boundary_ratio=None,
        expand_timesteps: bool = False,
        schedule: ScheduleArg = None,
    ):
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                         transformer=transformer, transformer_2=None, boundary_ratio=None, expand_timesteps=False)
        self.set_schedule(schedule)

    def model_adapter(self) -> WanAdapter:
        return WanAdapter(unwrap_transformer(self.transformer))

    def check_inputs(
        self,
        prompt: PromptArg = None,
        *,
        schedule=None,
        negative_prompt: PromptArg = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
        num_videos_per_prompt: int = 1,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "np",
        upsample_mode: str = "bicubic",
        time_mode: str = "linear",
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    ) -> tuple[ScaleSchedule, int]:
        """Validate every argument of `__call__` (SwdError naming the field); (schedule, prompts)."""
        adapter = self.model_adapter()
        schedule = self.call_schedule(schedule, adapter)
        width = adapter.config.text_dim
        if prompt is not None and prompt_embeds is not None:
            raise SwdError("prompt and prompt_embeds: give either prompts or precomputed embeddings, not both")
        if prompt_embeds is not None:
            _check_embeds("prompt_embeds", prompt_embeds, width)
            batch = prompt_embeds.shape[0]
        elif prompt is None:
            raise SwdError("prompt: give a prompt (str or list of str) or prompt_embeds")
        else:
            batch = prompt_count("prompt", prompt)
            if self.text_encoder is None or self.tokenizer is None:
                raise SwdError("prompt: this pipeline has no UMT5 text encoder/tokenizer; pass prompt_embeds")
        check_guidance(guidance_scale, 1, "1 = no classifier-free guidance")
        if guidance_scale > 1:
            if negative_prompt is not None and negative_prompt_embeds is not None:
                raise SwdError("negative_prompt and negative_prompt_embeds: give one, not both")
            if negative_prompt_embeds is not None:
                _check_embeds("negative_prompt_embeds", negative_prompt_embeds, width)
                if negative_prompt_embeds.shape[0] != batch:
                    raise SwdError(f"negative_prompt_embeds: batch of {negative_prompt_embeds.shape[0]} for {batch} prompts")
            elif self.text_encoder is None or self.tokenizer is None:
                raise SwdError("negative_prompt_embeds: guidance_scale > 1 needs them when the pipeline has no text encoder")
            elif negative_prompt is not None and not isinstance(negative_prompt, str):
                if prompt_count("negative_prompt", negative_prompt) != batch:
                    raise SwdError(f"negative_prompt: {len(negative_prompt)} negative prompt(s) for {batch} prompts")
        check_count("num_videos_per_prompt", num_videos_per_prompt)
        check_generator(generator)
        check_choice("output_type", output_type, VIDEO_OUTPUT_TYPES)
        check_choice("upsample_mode", upsample_mode, UPSAMPLE_MODES)
        check_choice("time_mode", time_mode, TIME_MODES)
        check_max_sequence_length(max_sequence_length, MAX_SEQUENCE_LENGTH)
        if self.vae is not None:
            check_vae_channels(self.vae.config.z_dim, adapter)
        check_latents(latents, (batch * num_videos_per_prompt, adapter.latent_channels, *schedule.scales[0]),
                      "videos, channels, first scale's frames, h, w")
        return schedule, batch

    def _condition(self, embeds: torch.Tensor, per_prompt: int, device, dtype) -> TextCondition:
        # Wan has no pooled text vector: a zero-width one keeps TextCondition's shape contract.
        embeds = embeds.to(device, dtype).repeat_interleave(per_prompt, dim=0)
        return TextCondition(embeds, embeds.new_zeros(embeds.shape[0], 0))

    def decode_latents(self, latents: torch.Tensor, output_type: str = "np"):
        """Normalised latents (B, C, F, h, w) -> 4 (F - 1) + 1 frames of 8h x 8w.

        Wan's latents are normalised per channel, z_model = (z_vae - mean) / std, so the VAE sees
        z_model * std + mean.
        """
        if output_type == "latent":
            return latents
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(latents.device, latents.dtype)
        video = self.vae.decode((latents * std + mean).to(self.vae.dtype), return_dict=False)[0]
        return self.video_processor.postprocess_video(video, output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptArg = None,
        *,
        schedule: Union[str, ScaleSchedule, None] = None,
        negative_prompt: PromptArg = None,
        guidance_scale: float = 1.0,
        num_videos_per_prompt: int = 1,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "np",
        return_dict: bool = True,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        upsample_mode: str = "bicubic",
        time_mode: str = "linear",
        callback: Optional[Callable[..., None]] = None,
    ):
        """Generate videos; the schedule (a video preset, file or ScaleSchedule; default: the pipeline's
        `schedule`, else `default_schedule`) sets the steps, (frames, h, w) latent sizes and sigmas.

        output_type: 'np' (B, F, H, W, 3) in [0, 1], 'pil' (a list of frame lists), 'pt'
            (B, F, 3, H, W), or 'latent' (B, C, frames, h, w) at the last scale, still normalised.
        time_mode: how x0 grows in time between scales (`swd.sampling.time_upsample_matrix`).
        callback: called after every step as callback(step=, x=, sigma=, x0=).
        Returns WanPipelineOutput(frames=...), or (frames,) with return_dict=False.
        """
        schedule, batch = self.check_inputs(
            prompt, schedule=schedule, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, guidance_scale=guidance_scale,
            num_videos_per_prompt=num_videos_per_prompt, generator=generator, latents=latents,
            output_type=output_type, upsample_mode=upsample_mode, time_mode=time_mode,
            max_sequence_length=max_sequence_length,
        )
        self._start_call(guidance_scale)
        device = self._execution_device
        adapter = self.model_adapter()
        dtype = adapter.dtype
        use_cfg = guidance_scale > 1

        # 1. Text: diffusers' UMT5 encoding (padded with zeros past each prompt's tokens); it wants
        # prompt and negative prompt of the same type.
        if isinstance(prompt, str) and isinstance(negative_prompt, list):
            prompt = [prompt]
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=use_cfg,
            num_videos_per_prompt=1, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length, device=device, dtype=dtype,
        )
        cond = self._condition(prompt_embeds, num_videos_per_prompt, device, dtype)
        uncond = self._condition(negative_prompt_embeds, num_videos_per_prompt, device, dtype) if use_cfg else None

        # 2. Denoiser: the student alone, or with CFG against the negative prompt.
        denoiser = prompt_denoiser(adapter, cond, uncond, guidance_scale)

        # 3. Scale-wise sampling from noise at the first (frames, h, w) to x0 at the last.
        x0 = self.sample_latents(denoiser, schedule, cond.batch_size, adapter.latent_channels, generator, device, dtype,
                                 latents, upsample_mode, callback, time_mode=time_mode)

        # 4. Decode.
        frames = self.decode_latents(x0, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return WanPipelineOutput(frames=frames)
