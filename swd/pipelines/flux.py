"""Scale-wise sampling pipeline for FLUX students.

`SwDFluxPipeline` is diffusers' `FluxPipeline` with a scale-wise `__call__`: prompts are
encoded by diffusers' own `encode_prompt` (CLIP pooled vector + T5 tokens), the latents come
from `swd.sampling.sample_scalewise` driven by a `FluxAdapter` (which packs latents and rebuilds
the RoPE ids for every size), and the VAE decodes the last scale.

FLUX-dev students keep the teacher's embedded guidance (guidance_scale=4.5, SWD_SPEC section 3):
it is an input of the transformer, not classifier-free guidance, so one forward per step.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from swd.models.flux import FluxAdapter
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
from swd.schedules import ScaleSchedule

PromptArg = Optional[Union[str, list[str]]]


class SwDFluxPipeline(ScaleWisePipelineMixin, FluxPipeline):
    """Few-step scale-wise text-to-image generation with a FLUX student.

    Components are those of `FluxPipeline`. The text encoders and tokenizers are optional
    (without them, pass `prompt_embeds` and `pooled_prompt_embeds`); `scheduler` is optional
    and unused, kept so that a standard FLUX folder loads unchanged.
    """

    default_schedule = "flux-dev-4"
    default_guidance = 4.5
    text_encoder_names = "text encoders/tokenizers (CLIP and T5)"
    _optional_components = [*OPTIONAL_COMPONENTS]

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel = None,
        tokenizer: CLIPTokenizer = None,
        text_encoder_2: T5EncoderModel = None,
        tokenizer_2: T5TokenizerFast = None,
        scheduler: FlowMatchEulerDiscreteScheduler = None,
        image_encoder=None,
        feature_extractor=None,
        schedule: ScheduleArg = None,
    ):
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.set_schedule(schedule)

    def model_adapter(self, guidance: float = default_guidance) -> FluxAdapter:
        """The sampler's view of the transformer on unpacked latents: (x, sigma, cond) -> velocity."""
        return FluxAdapter(unwrap_transformer(self.transformer), guidance=guidance)

    def check_inputs(
        self,
        prompt: PromptArg = None,
        prompt_2: PromptArg = None,
        *,
        schedule: Union[str, ScaleSchedule, None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        guidance_scale: float = default_guidance,
        num_images_per_prompt: int = 1,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        upsample_mode: str = "bicubic",
        max_sequence_length: int = 512,
    ) -> ScaleSchedule:
        """Validate every argument of `__call__` (SwdError naming the field); returns the resolved schedule."""
        adapter = self.model_adapter()
        schedule = self.call_schedule(schedule, adapter)
        check_image_size(schedule, height, width, self.vae_scale_factor)
        batch = self.check_text(adapter, {"prompt": prompt, "prompt_2": prompt_2}, prompt_embeds, pooled_prompt_embeds)
        check_guidance(guidance_scale, 0, "FLUX's embedded guidance")
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
            max_sequence_length=max_sequence_length,
            max_sequence_limit=512,
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
        guidance_scale: float = default_guidance,
        num_images_per_prompt: int = 1,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        max_sequence_length: int = 512,
        upsample_mode: str = "bicubic",
        callback: Optional[Callable[..., None]] = None,
    ):
        """Generate images; the schedule (preset name, file or ScaleSchedule; default: the pipeline's
        `schedule`, else `default_schedule`) sets steps, sizes and sigmas.

        guidance_scale: FLUX's embedded guidance (ignored by models without a guidance embedding).
        generator: one CPU torch.Generator seeds the starting noise and every re-noising.
        latents: optional starting noise, unpacked: (B * num_images_per_prompt, C, *schedule.scales[0]).
        output_type: 'pil' | 'np' | 'pt' (images in [0, 1]) or 'latent' (the final x0 latents,
            unpacked (B, C, *schedule.final_size), before the VAE scaling is undone).
        callback: called after every step as callback(step=, x=, sigma=, x0=), on unpacked latents.
        Returns FluxPipelineOutput(images=...), or (images,) with return_dict=False.
        """
        # The authors' call style: scales= and sigmas= (trailing 0 optional), timesteps= and height/width checked.
        schedule = self.check_inputs(
            prompt,
            prompt_2,
            schedule=authors_schedule(schedule, scales, sigmas, timesteps),
            height=height,
            width=width,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            output_type=output_type,
            upsample_mode=upsample_mode,
            max_sequence_length=max_sequence_length,
        )
        self._start_call(guidance_scale)

        # 1. Text: diffusers' own encoders; per-image copies are made in step 2, for embeddings too.
        prompt_embeds, pooled_prompt_embeds, _ = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            device=self._execution_device,
            num_images_per_prompt=1,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            max_sequence_length=max_sequence_length,
        )

        # 2-4. The student with its embedded guidance (one forward a step), sampling on unpacked latents
        # (the adapter packs them for the transformer), decoding.
        images = self.generate(
            self.model_adapter(float(guidance_scale)), schedule, (prompt_embeds, pooled_prompt_embeds), None,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, generator=generator,
            latents=latents, upsample_mode=upsample_mode, callback=callback, output_type=output_type,
        )
        return FluxPipelineOutput(images=images) if return_dict else (images,)
