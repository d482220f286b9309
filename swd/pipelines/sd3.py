"""Scale-wise sampling pipeline for SD3 / SD3.5 students.

`SwDStableDiffusion3Pipeline` is diffusers' `StableDiffusion3Pipeline` with a scale-wise
`__call__`: prompts are encoded by diffusers' own `encode_prompt` (CLIP L + CLIP G + T5, the
pipeline is a subclass), the latents come from `swd.sampling.sample_scalewise` driven by an
`SD3Adapter`, and the VAE decodes the last scale. The image size is the schedule's last latent
size times the VAE factor; sampling starts from noise at its first size.

    pipe = SwDStableDiffusion3Pipeline.from_pretrained("path/to/sd3.5-large", torch_dtype=torch.float16)
    swd.lora.load_lora(pipe.transformer, "path/to/swd-large-4-steps")
    image = pipe("a cat", schedule="sd35-large-4", generator=torch.Generator().manual_seed(0)).images[0]

SD3.5 students run without classifier-free guidance (guidance_scale=1, SWD_SPEC section 3);
guidance_scale > 1 batches the negative (by default empty) prompt through `swd.sampling.guided`.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from swd.models.sd3 import SD3Adapter
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


class SwDStableDiffusion3Pipeline(ScaleWisePipelineMixin, StableDiffusion3Pipeline):
    """Few-step scale-wise text-to-image generation with an SD3-family student.

    Components are those of `StableDiffusion3Pipeline`. The text encoders and tokenizers are
    optional (without them, pass `prompt_embeds` and `pooled_prompt_embeds`; without
    `text_encoder_3` the T5 part of the prompt is zeros, as in diffusers). `scheduler` is
    optional and unused: it is kept so that a standard SD3.5 folder loads unchanged.
    """

    default_schedule = "sd35-large-4"
    _optional_components = [*OPTIONAL_COMPONENTS, "text_encoder_3", "tokenizer_3"]

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModelWithProjection = None,
        tokenizer: CLIPTokenizer = None,
        text_encoder_2: CLIPTextModelWithProjection = None,
        tokenizer_2: CLIPTokenizer = None,
        text_encoder_3: T5EncoderModel = None,
        tokenizer_3: T5TokenizerFast = None,
        scheduler: FlowMatchEulerDiscreteScheduler = None,
        image_encoder=None,
        feature_extractor=None,
        schedule: ScheduleArg = None,
    ):
        super().__init__(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.set_schedule(schedule)

    def model_adapter(self) -> SD3Adapter:
        """The sampler's view of the transformer: (x, sigma, cond) -> velocity."""
        return SD3Adapter(unwrap_transformer(self.transformer))

    def check_inputs(
        self,
        prompt: PromptArg = None,
        prompt_2: PromptArg = None,
        prompt_3: PromptArg = None,
        *,
        schedule: Union[str, ScaleSchedule, None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        negative_prompt: PromptArg = None,
        negative_prompt_2: PromptArg = None,
        negative_prompt_3: PromptArg = None,
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
        max_sequence_length: int = 256,
    ) -> ScaleSchedule:
        """Validate every argument of `__call__` (SwdError naming the field); returns the resolved schedule."""
        adapter = self.model_adapter()
        schedule = self.call_schedule(schedule, adapter)
        check_image_size(schedule, height, width, self.vae_scale_factor)
        check_guidance(guidance_scale, 1, "1 = no classifier-free guidance, the SwD default")
        negatives = {"negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2,
                     "negative_prompt_3": negative_prompt_3}
        batch = self.check_text(
            adapter, {"prompt": prompt, "prompt_2": prompt_2, "prompt_3": prompt_3}, prompt_embeds, pooled_prompt_embeds,
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
            max_sequence_length=max_sequence_length,
            max_sequence_limit=512,
        )
        return schedule

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptArg = None,
        prompt_2: PromptArg = None,
        prompt_3: PromptArg = None,
        *,
        schedule: Union[str, ScaleSchedule, None] = None,
        scales=None,
        sigmas=None,
        timesteps=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        negative_prompt: PromptArg = None,
        negative_prompt_2: PromptArg = None,
        negative_prompt_3: PromptArg = None,
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
        max_sequence_length: int = 256,
        upsample_mode: str = "bicubic",
        callback: Optional[Callable[..., None]] = None,
    ):
        """Generate images; the schedule (preset name, file or ScaleSchedule; default: the pipeline's
        `schedule`, else `default_schedule`) sets steps, sizes and sigmas.

        generator: one CPU torch.Generator seeds the starting noise and every re-noising, so the same
            seed gives the same images on any device. latents: optional starting noise,
            (B * num_images_per_prompt, C, *schedule.scales[0]).
        output_type: 'pil' | 'np' | 'pt' (images in [0, 1]) or 'latent' (the final x0 latents,
            (B, C, *schedule.final_size), before the VAE scaling is undone).
        guidance_scale: 1 (default) runs the student alone; > 1 adds classifier-free guidance
            against negative_prompt (default: the empty prompt) or negative_prompt_embeds, which
            are ignored at 1.
        callback: called after every step as callback(step=, x=, sigma=, x0=).
        Returns StableDiffusion3PipelineOutput(images=...), or (images,) with return_dict=False.
        """
        # The authors' call style: scales= and sigmas= (trailing 0 optional), timesteps= and height/width checked.
        schedule = self.check_inputs(
            prompt,
            prompt_2,
            prompt_3,
            schedule=authors_schedule(schedule, scales, sigmas, timesteps),
            height=height,
            width=width,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3,
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
            max_sequence_length=max_sequence_length,
        )
        self._start_call(guidance_scale, clip_skip)
        use_cfg = guidance_scale > 1

        # 1. Text: diffusers' own encoder stack; per-image copies are made in step 2, for embeddings too.
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            prompt_3=prompt_3,
            device=self._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=use_cfg,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            negative_prompt_3=negative_prompt_3,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip,
            max_sequence_length=max_sequence_length,
        )

        # 2-4. Denoiser (the student alone, or CFG against the negative prompt), scale-wise sampling, decoding.
        negatives = (negative_prompt_embeds, negative_pooled_prompt_embeds) if use_cfg else None
        images = self.generate(
            self.model_adapter(), schedule, (prompt_embeds, pooled_prompt_embeds), negatives,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, generator=generator,
            latents=latents, upsample_mode=upsample_mode, callback=callback, output_type=output_type,
        )
        return StableDiffusion3PipelineOutput(images=images) if return_dict else (images,)
