"""Scale-wise sampling pipeline for SDXL students (noise-prediction UNet).

`SwDStableDiffusionXLPipeline` is diffusers' `StableDiffusionXLPipeline` with a scale-wise
`__call__`: prompts are encoded by diffusers' own `encode_prompt` (CLIP L states + CLIP G states
and pooled vector), the latents come from `swd.sampling.sample_scalewise` driven by a
`UNetAdapter` with SDXL's added conditions, and the VAE decodes the last scale.

The forward process follows the pipeline's scheduler config: a DDPM-family scheduler (DDPM,
Euler, ...) gives `DDPMProcess` with its betas and prediction_type; without a scheduler, SDXL's
(scaled_linear 0.00085 -> 0.012, epsilon). Sigma is the timestep over 1000, as the authors' call
`timesteps = 1000 * sigmas` (sigma 1 -> timestep 999).

    pipe = SwDStableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
    swd.lora.load_lora(pipe.unet, "yresearch/swd-sdxl")
    image = pipe("a cat", schedule="sdxl-4").images[0]

Time ids (SDXL's micro-conditions) follow each scale: an uncropped image of the current latent
size times the VAE factor, as in training (`UNetAdapter.added_conditions`).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from swd.models.unet import UNetAdapter
from swd.pipelines.common import (
    OPTIONAL_COMPONENTS,
    ScaleWisePipelineMixin,
    ScheduleArg,
    authors_schedule,
    check_common,
    check_guidance,
    check_image_size,
    unwrap_transformer,
)
from swd.processes import process_from_scheduler_config, sdxl_process
from swd.schedules import ScaleSchedule

PromptArg = Optional[Union[str, list[str]]]


class SwDStableDiffusionXLPipeline(ScaleWisePipelineMixin, StableDiffusionXLPipeline):
    """Few-step scale-wise text-to-image generation with an SDXL student.

    Components are those of `StableDiffusionXLPipeline`; the text encoders, tokenizers and the
    scheduler are optional (without encoders pass `prompt_embeds` and `pooled_prompt_embeds`).
    The scheduler is not stepped: its config only names the forward process.
    """

    default_schedule = "sdxl-4"
    network_name = "unet"
    _optional_components = [*OPTIONAL_COMPONENTS]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel = None,
        tokenizer: CLIPTokenizer = None,
        text_encoder_2: CLIPTextModelWithProjection = None,
        tokenizer_2: CLIPTokenizer = None,
        scheduler=None,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: Optional[bool] = False,
        schedule: ScheduleArg = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.set_schedule(schedule)

    def noise_process(self):
        """The forward process of the scheduler's config (SDXL's DDPM without a scheduler)."""
        if self.scheduler is None:
            return sdxl_process("epsilon")
        return process_from_scheduler_config(self.scheduler.config)

    def model_adapter(self) -> UNetAdapter:
        """The sampler's view of the UNet: (x, sigma, cond) -> its prediction; `.process` gives x0."""
        process = self.noise_process()
        prediction = getattr(process, "prediction", "flow")
        return UNetAdapter(unwrap_transformer(self.unet), prediction=prediction, process=process,
                           vae_scale_factor=self.vae_scale_factor)

    def check_inputs(
        self,
        prompt: PromptArg = None,
        prompt_2: PromptArg = None,
        *,
        schedule: Union[str, ScaleSchedule, None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        negative_prompt: PromptArg = None,
        negative_prompt_2: PromptArg = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        negative_pooled_prompt_embeds: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        upsample_mode: str = "bicubic",
    ) -> ScaleSchedule:
        """Validate every argument of `__call__` (SwdError naming the field); returns the resolved schedule."""
        adapter = self.model_adapter()
        schedule = self.call_schedule(schedule, adapter)
        check_image_size(schedule, height, width, self.vae_scale_factor)
        check_guidance(guidance_scale, 0, "<= 1 = no classifier-free guidance, the SwD default")
        negatives = {"negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2}
        batch = self.check_text(
            adapter, {"prompt": prompt, "prompt_2": prompt_2}, prompt_embeds, pooled_prompt_embeds,
            negatives if guidance_scale > 1 else None, negative_prompt_embeds, negative_pooled_prompt_embeds,
        )
        check_common(
            adapter=adapter,
            vae=self.vae,
            schedule=schedule,
            batch=batch,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            output_type=output_type,
            upsample_mode=upsample_mode,
            max_sequence_length=None,  # CLIP's 77 tokens, set by the tokenizers
            max_sequence_limit=0,
        )
        return schedule

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptArg = None,
        prompt_2: PromptArg = None,
        *,
        schedule: Union[str, ScaleSchedule, None] = None,
        scales=None,
        sigmas=None,
        timesteps=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        negative_prompt: PromptArg = None,
        negative_prompt_2: PromptArg = None,
        guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        negative_pooled_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        clip_skip: Optional[int] = None,
        upsample_mode: str = "bicubic",
        callback: Optional[Callable[..., None]] = None,
    ):
        """Generate images; the schedule (preset name, file or ScaleSchedule; default: the pipeline's
        `schedule`, else `default_schedule`) sets steps, sizes and sigmas.

        The authors' call: `pipe(prompt, timesteps=1000 * sigmas (trailing 0 included), scales=[...],
        height=1024, width=1024, guidance_scale=1.0)`; height/width may be the first or last scale's
        size, the image has the last. guidance_scale <= 1 runs the student alone; > 1 adds CFG
        against negative_prompt (by default the empty prompt, zeros as SDXL's
        force_zeros_for_empty_prompt). callback(step=, x=, sigma=, x0=) after every step.
        Returns StableDiffusionXLPipelineOutput(images=...), or (images,) with return_dict=False.
        """
        schedule = self.check_inputs(
            prompt,
            prompt_2,
            schedule=authors_schedule(schedule, scales, sigmas, timesteps),
            height=height,
            width=width,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            output_type=output_type,
            upsample_mode=upsample_mode,
        )
        self._start_call(guidance_scale, clip_skip)
        use_cfg = guidance_scale > 1

        # 1. Text: diffusers' own two-encoder stack; per-image copies are made in step 2.
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            device=self._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=use_cfg,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip,
        )

        # 2-4. Denoiser (the student alone, or CFG on the UNet's eps or v), sampling (x0 through
        # adapter.process), decoding.
        negatives = (negative_prompt_embeds, negative_pooled_prompt_embeds) if use_cfg else None
        images = self.generate(
            self.model_adapter(), schedule, (prompt_embeds, pooled_prompt_embeds), negatives,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, generator=generator,
            latents=latents, upsample_mode=upsample_mode, callback=callback, output_type=output_type,
        )
        return StableDiffusionXLPipelineOutput(images=images) if return_dict else (images,)
