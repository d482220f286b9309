"""What the SD3, FLUX and SDXL scale-wise pipelines share: argument checks, sampling and decoding.

Each pipeline subclasses diffusers' own pipeline of its family, so prompt encoding, component
registration, `from_pretrained`/`save_pretrained` and the LoRA loader mixins are diffusers'. What
they replace is `__call__`: each family checks its inputs and encodes its prompts (step 1), then
`ScaleWisePipelineMixin.generate` builds the denoiser (step 2), samples through
`swd.sampling.sample_scalewise`, the one sampling path of the project (step 3), and decodes (step
4). The image size follows the schedule's last scale.

The student's schedule is an entry of the pipeline's own config (`SwDPipelineMixin`), so
`save_pretrained` writes it into model_index.json and `from_pretrained` gives it back, the way
diffusers keeps SDXL's `force_zeros_for_empty_prompt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from swd.errors import SwdError
from swd.models import text_widths
from swd.models.base import TextCondition
from swd.sampling import UPSAMPLE_MODES, conditioned, guided, sample_scalewise
from swd.schedules import ScaleSchedule, resolve_schedule

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Components a scale-wise image pipeline loads without: the scheduler is never stepped, and
# without text encoders and tokenizers the caller passes embeddings. SD3 adds its T5 pair.
OPTIONAL_COMPONENTS = ["scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder",
                       "feature_extractor"]
# What the trainer's export writes beside a student's config.json (`swd distill`, swd/train/distill.py).
SCHEDULE_FILE = "schedule.yaml"


def unwrap_transformer(transformer):
    """The diffusers model inside a peft `PeftModel` wrapper (LoRA layers stay active), else itself."""
    get_base = getattr(transformer, "get_base_model", None)
    return get_base() if callable(get_base) else transformer


def prompt_count(name: str, value) -> int:
    """How many prompts a str or a non-empty list of str holds."""
    if isinstance(value, str):
        return 1
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return len(value)
    raise SwdError(f"{name}: expected a str or a non-empty list of str, got {describe(value)}")


def _check_embed_pair(embeds, pooled, names: tuple[str, str]) -> None:
    if embeds is None:
        if pooled is not None:
            raise SwdError(f"{names[1]}: given without {names[0]}; pass both or neither")
        return
    if pooled is None:
        raise SwdError(f"{names[1]}: required with {names[0]} (the pooled vectors of the same prompts)")
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
        raise SwdError(f"{names[0]}: expected a (B, L, D) tensor, got {describe(embeds)}")
    if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2:
        raise SwdError(f"{names[1]}: expected a (B, D) tensor, got {describe(pooled)}")
    if embeds.shape[0] != pooled.shape[0]:
        raise SwdError(f"{names[0]} and {names[1]}: batch sizes differ ({embeds.shape[0]} and {pooled.shape[0]})")


def check_prompts(prompt_fields: dict, prompt_embeds, pooled_prompt_embeds) -> int:
    """Exactly one of prompts or embeddings; returns the batch size (number of prompts).

    prompt_fields maps argument names to values, the main prompt first (prompt, prompt_2, ...);
    the secondary prompts go to the other text encoders and must come in the same number.
    """
    names = list(prompt_fields)
    given = [n for n in names if prompt_fields[n] is not None]
    if given and prompt_embeds is not None:
        raise SwdError(f"{given[0]} and prompt_embeds: give either prompts or precomputed embeddings, not both")
    _check_embed_pair(prompt_embeds, pooled_prompt_embeds, ("prompt_embeds", "pooled_prompt_embeds"))
    if prompt_embeds is not None:
        return prompt_embeds.shape[0]
    if not given:
        raise SwdError("prompt: give a prompt (str or list of str) or prompt_embeds with pooled_prompt_embeds")
    if prompt_fields[names[0]] is None:
        raise SwdError(f"{names[0]}: required when {given[0]} is given")
    batch = prompt_count(names[0], prompt_fields[names[0]])
    for name in given[1:]:
        n = prompt_count(name, prompt_fields[name])
        if n != batch:
            raise SwdError(f"{name}: {n} prompt(s), but {names[0]} has {batch}")
    return batch


def check_negative_prompts(negative_fields: dict, negative_embeds, negative_pooled, prompt_embeds, batch: int) -> None:
    """Negative prompts (a str applies to every prompt) or embeddings, matching the positive batch."""
    given = [n for n in negative_fields if negative_fields[n] is not None]
    if given and negative_embeds is not None:
        raise SwdError(f"{given[0]} and negative_prompt_embeds: give either prompts or embeddings, not both")
    names = ("negative_prompt_embeds", "negative_pooled_prompt_embeds")
    _check_embed_pair(negative_embeds, negative_pooled, names)
    if negative_embeds is not None:
        if negative_embeds.shape[0] != batch:
            raise SwdError(f"negative_prompt_embeds: batch of {negative_embeds.shape[0]} for {batch} prompts")
        if prompt_embeds is not None and negative_embeds.shape[1:] != prompt_embeds.shape[1:]:
            raise SwdError(
                f"negative_prompt_embeds: shape {tuple(negative_embeds.shape)} does not match prompt_embeds "
                f"{tuple(prompt_embeds.shape)} outside the batch dimension"
            )
        return
    for name in given:
        n = prompt_count(name, negative_fields[name])
        if not isinstance(negative_fields[name], str) and n != batch:
            raise SwdError(f"{name}: {n} negative prompt(s) for {batch} prompts")


def check_embed_widths(prompt_embeds, pooled, joint_dim: int, pooled_dim: int, names=("prompt_embeds", "pooled_prompt_embeds")):
    if prompt_embeds is None:
        return
    if prompt_embeds.shape[-1] != joint_dim:
        raise SwdError(f"{names[0]}: last dimension {prompt_embeds.shape[-1]} does not match the transformer's {joint_dim}")
    if pooled.shape[-1] != pooled_dim:
        raise SwdError(f"{names[1]}: last dimension {pooled.shape[-1]} does not match the transformer's {pooled_dim}")


def authors_schedule(schedule, scales=None, sigmas=None, timesteps=None):
    """`scales=` with `sigmas=` and/or `timesteps=` (the authors' call style) become a ScaleSchedule;
    else `schedule` as given (a `timesteps=` alone is then checked against it)."""
    if scales is None and sigmas is None:
        if timesteps is not None and schedule is None:
            raise SwdError("timesteps: give scales= with it (the authors' call style) or a schedule=")
        if timesteps is not None:
            from swd.schedules import from_authors
            resolved = resolve_schedule(schedule)
            if not _same_sigmas(from_authors(resolved.scales, None, timesteps), resolved):
                raise SwdError(f"timesteps: {list(timesteps)} do not equal 1000 * the schedule's sigmas {list(resolved.sigmas)}")
        return schedule
    if schedule is not None:
        raise SwdError("schedule: pass either schedule= or scales=/sigmas=, not both")
    from swd.schedules import from_authors
    return from_authors(scales, sigmas, timesteps)


def _same_sigmas(a: ScaleSchedule, b: ScaleSchedule) -> bool:
    return len(a.sigmas) == len(b.sigmas) and all(abs(x - y) <= 1e-3 for x, y in zip(a.sigmas, b.sigmas))


def check_image_size(schedule: ScaleSchedule, height, width, vae_scale_factor: int) -> None:
    """The authors' calls pass height/width: the first scale's size (their SD3/FLUX README) or the
    last (their SDXL README). Either is accepted; the image always has the last scale's size."""
    if height is None and width is None:
        return
    sizes = [tuple(v * vae_scale_factor for v in schedule.scales[i]) for i in (0, -1)]
    if (height, width) not in sizes:
        raise SwdError(f"height, width: {height}x{width} px is neither the schedule's first nor last size "
                       f"({sizes[0][0]}x{sizes[0][1]} or {sizes[1][0]}x{sizes[1][1]} px); the image has the last")


def check_schedule(schedule, adapter, default: Union[str, ScaleSchedule]) -> ScaleSchedule:
    """Resolve a preset name, a schedule file or a ScaleSchedule and check it fits the transformer."""
    schedule = default if schedule is None else schedule
    if not isinstance(schedule, (str, ScaleSchedule)):
        raise SwdError(f"schedule: expected a preset name, a schedule file or a ScaleSchedule, got {describe(schedule)}")
    schedule = resolve_schedule(schedule)
    schedule.check_model(adapter.patch_size, adapter.max_latent_size, what="transformer")
    return schedule


def check_count(name: str, value) -> None:
    """A positive int (images or videos per prompt)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SwdError(f"{name}: expected a positive int, got {value!r}")


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise SwdError(f"generator: expected one torch.Generator (it seeds the whole batch), got {describe(generator)}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise SwdError(f"{name}: unknown {value!r}; choose one of {', '.join(choices)}")


def check_guidance(value, minimum: int, meaning: str) -> None:
    """guidance_scale: a number >= minimum; meaning says what the values do for this family."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise SwdError(f"guidance_scale: expected a number >= {minimum} ({meaning}), got {value!r}")


def check_max_sequence_length(value, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise SwdError(f"max_sequence_length: expected an int in [1, {limit}], got {value!r}")


def check_vae_channels(vae_channels: int, adapter) -> None:
    if vae_channels != adapter.latent_channels:
        raise SwdError(f"vae: {vae_channels} latent channels, but the transformer takes {adapter.latent_channels}")


def check_latents(latents, expected: tuple, layout: str) -> None:
    """Starting noise of shape `expected`; layout names its dimensions for the message."""
    if latents is None:
        return
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else describe(latents)
        raise SwdError(f"latents: the starting noise must have shape {expected} ({layout}), got {got}")


def check_common(
    *,
    adapter,
    vae,
    schedule: ScaleSchedule,
    batch: int,
    num_images_per_prompt,
    generator,
    latents,
    output_type,
    upsample_mode,
    max_sequence_length,
    max_sequence_limit: int,
) -> None:
    """Checks the image pipelines share (the schedule is already resolved)."""
    check_count("num_images_per_prompt", num_images_per_prompt)
    check_generator(generator)
    check_choice("output_type", output_type, OUTPUT_TYPES)
    if output_type != "latent" and vae is None:
        raise SwdError(f"output_type: {output_type!r} needs a vae; this pipeline has none (use 'latent')")
    check_choice("upsample_mode", upsample_mode, UPSAMPLE_MODES)
    if max_sequence_length is not None:
        check_max_sequence_length(max_sequence_length, max_sequence_limit)
    if vae is not None:
        check_vae_channels(vae.config.latent_channels, adapter)
    check_latents(latents, (batch * num_images_per_prompt, adapter.latent_channels, *schedule.scales[0]),
                  "batch x images per prompt, channels, first scale of the schedule")


def prompt_denoiser(model, cond: TextCondition, uncond: Optional[TextCondition], guidance_scale: float):
    """Step 2 of every `__call__`: the student alone (`uncond` None), or classifier-free guidance
    against the negative prompts, whose token states must have the prompts' shape.

    Guidance mixes the model's outputs (a velocity, eps or v, each linear in x0), so one rule
    serves the flow transformers and the noise-prediction UNets alike.
    """
    if uncond is None:
        return conditioned(model, cond)
    if uncond.prompt_embeds.shape[1:] != cond.prompt_embeds.shape[1:]:
        raise SwdError(
            f"negative_prompt_embeds: shape {tuple(uncond.prompt_embeds.shape)} does not match the "
            f"encoded prompts {tuple(cond.prompt_embeds.shape)} outside the batch dimension"
        )
    return guided(model, cond, uncond, float(guidance_scale))


def _same_model(a, b) -> bool:
    """Two adapters over the same network with the same settings (FLUX: embedded guidance)."""
    return a.network is b.network and getattr(a, "guidance", None) == getattr(b, "guidance", None)


def describe(value) -> str:
    """A value for an error message: a tensor's shape, else its type."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


ScheduleArg = Union[str, ScaleSchedule, dict, None]


def schedule_config(schedule: ScheduleArg) -> Optional[dict]:
    """A preset name, a schedule file, a ScaleSchedule or the mapping model_index.json holds, as the
    JSON-ready mapping a pipeline config keeps (None stays None).

    The sigmas are kept exactly (`ScaleSchedule.to_dict` rounds them to 6 decimals for files people
    read), so a pipeline samples the same latents before `save_pretrained` and after `from_pretrained`.
    """
    if schedule is None:
        return None
    if isinstance(schedule, dict):
        schedule = ScaleSchedule.from_dict(schedule)
    elif not isinstance(schedule, (str, ScaleSchedule)):
        raise SwdError(f"schedule: expected a preset name, a schedule file or a ScaleSchedule, got {describe(schedule)}")
    schedule = resolve_schedule(schedule)
    return {**schedule.to_dict(), "sigmas": list(schedule.sigmas)}


def schedule_beside(model) -> Optional[ScaleSchedule]:
    """The schedule.yaml beside the config.json of the folder `model` was loaded from (a student the
    trainer exported), or None (a model built in memory, a Hub id, a folder without one)."""
    folder = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not folder:
        return None
    file = Path(folder) / SCHEDULE_FILE
    return ScaleSchedule.load(file) if file.is_file() else None


class SwDPipelineMixin:
    """What every SwD pipeline (image and video) shares: the student's ScaleSchedule kept in the
    pipeline's own config, loading that refuses pickles, and the sampling step.

    A pipeline's `__init__` takes `schedule=` and calls `set_schedule`; diffusers passes the saved
    entry back to `__init__` on `from_pretrained`. A call's `schedule=` overrides it; without
    either, calls use the family's published preset `default_schedule`.
    """

    default_schedule = ""
    network_name = "transformer"  # the component the schedule belongs to ("unet" for SDXL)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # A Hub id goes through swd.hub (HF_HUB_OFFLINE read at call time, one-line errors, component
        # folders only); diffusers then loads the local folder.
        from swd.hub import pipeline_folder

        if isinstance(pretrained_model_name_or_path, str) and not kwargs.get("cache_dir"):
            pretrained_model_name_or_path = str(pipeline_folder(pretrained_model_name_or_path, "pretrained_model_name_or_path",
                                                                variant=kwargs.get("variant")))
        # Safetensors only: without it diffusers falls back to torch.load of a pickled .bin.
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def set_schedule(self, schedule: ScheduleArg = None):
        """Keep the student's schedule (preset name, file, ScaleSchedule) in the pipeline's config.

        None looks for the schedule.yaml the trainer's export writes beside the student network's
        config.json (folders exported before the config entry existed); without one the entry is
        None and calls use `default_schedule`. Returns the pipeline.
        """
        if schedule is None:
            schedule = schedule_beside(unwrap_transformer(getattr(self, self.network_name, None)))
        self.register_to_config(schedule=schedule_config(schedule))
        return self

    @property
    def schedule(self) -> Optional[ScaleSchedule]:
        """The schedule in the pipeline's config, or None (calls then use `default_schedule`)."""
        data = self.config.get("schedule")
        return None if data is None else ScaleSchedule.from_dict(dict(data))

    def call_schedule(self, schedule: ScheduleArg, adapter) -> ScaleSchedule:
        """A call's `schedule=`, else the config's, else `default_schedule`; resolved and checked
        against the network (patch size, largest latent size)."""
        return check_schedule(schedule, adapter, self.schedule or self.default_schedule)

    def _start_call(self, guidance_scale, clip_skip=None) -> None:
        """The call state diffusers' properties read (`guidance_scale`, `clip_skip`, `interrupt`, ...)."""
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._joint_attention_kwargs = None
        self._cross_attention_kwargs = None
        self._interrupt = False

    def sample_latents(self, denoiser, schedule: ScaleSchedule, batch: int, channels: int, generator, device, dtype,
                       latents, upsample_mode: str, callback, **options) -> torch.Tensor:
        """Step 3 of `__call__`: `sample_scalewise` from noise at the first scale (or `latents`) to x0
        at the last, ticking diffusers' progress bar once per step. options: `process` (UNets'
        eps/v to x0), `time_mode` (video)."""
        with self.progress_bar(total=schedule.steps) as bar:

            def on_step(**info):
                bar.update()
                if callback is not None:
                    callback(**info)

            return sample_scalewise(denoiser, schedule, batch_size=batch, channels=channels, generator=generator,
                                    device=device, dtype=dtype, upsample_mode=upsample_mode, noise=latents,
                                    callback=on_step, **options)


class ScaleWisePipelineMixin(SwDPipelineMixin):
    """Sampling and decoding for a pipeline with `transformer`, `vae` and `image_processor`."""

    # How the messages name the text encoders a pipeline needs for prompts (FLUX: CLIP and T5).
    text_encoder_names = "CLIP text encoders/tokenizers"

    def _has_text_encoders(self) -> bool:
        parts = (self.text_encoder, self.tokenizer, self.text_encoder_2, self.tokenizer_2)
        return all(p is not None for p in parts)

    def check_text(self, adapter, prompts: dict, prompt_embeds, pooled_prompt_embeds, negatives: Optional[dict] = None,
                   negative_prompt_embeds=None, negative_pooled_prompt_embeds=None) -> int:
        """Prompts or embeddings, and with guidance (`negatives`: the negative prompt fields, None
        without guidance) negative prompts or embeddings, against the text encoders the pipeline
        has and the network's text widths. Returns the number of prompts."""
        batch = check_prompts(prompts, prompt_embeds, pooled_prompt_embeds)
        if prompt_embeds is None and not self._has_text_encoders():
            raise SwdError(f"prompt: this pipeline has no {self.text_encoder_names}; pass prompt_embeds and pooled_prompt_embeds")
        widths = text_widths(adapter.config)
        check_embed_widths(prompt_embeds, pooled_prompt_embeds, *widths)
        if negatives is None:
            return batch
        check_negative_prompts(negatives, negative_prompt_embeds, negative_pooled_prompt_embeds, prompt_embeds, batch)
        if negative_prompt_embeds is None and not self._has_text_encoders():
            raise SwdError("negative_prompt_embeds: guidance_scale > 1 needs negative embeddings (with "
                           "negative_pooled_prompt_embeds) when the pipeline has no text encoders")
        check_embed_widths(negative_prompt_embeds, negative_pooled_prompt_embeds, *widths,
                           names=("negative_prompt_embeds", "negative_pooled_prompt_embeds"))
        return batch

    def _condition(self, prompt_embeds, pooled, num_images_per_prompt: int, device, dtype) -> TextCondition:
        cond = TextCondition(prompt_embeds.to(device, dtype), pooled.to(device, dtype))
        return cond.repeat(num_images_per_prompt)

    def denoiser(self, adapter, cond: TextCondition, uncond: Optional[TextCondition], guidance_scale: float, device):
        """Step 2 of `__call__` (`prompt_denoiser`), through the compiled adapter after `compile()`."""
        return prompt_denoiser(self.fast_adapter(adapter, device), cond, uncond, guidance_scale)

    def generate(self, adapter, schedule: ScaleSchedule, text: tuple, negative_text: Optional[tuple], *,
                 guidance_scale: float, num_images_per_prompt: int, generator, latents, upsample_mode: str,
                 callback, output_type: str):
        """Steps 2-4 of `__call__` once the prompts are encoded: denoiser, scale-wise sampling, decoding.

        text: (prompt_embeds (B, L, D), pooled (B, D)) of the prompts, one row per prompt;
        negative_text: the same for the negative prompts, or None for no guidance. Each row is
        repeated num_images_per_prompt times. Returns the decoded images (`decode_latents`).
        """
        device, dtype = self._execution_device, adapter.dtype
        cond = self._condition(*text, num_images_per_prompt, device, dtype)
        uncond = None if negative_text is None else self._condition(*negative_text, num_images_per_prompt, device, dtype)
        denoiser = self.denoiser(adapter, cond, uncond, guidance_scale, device)
        # Noise at the first scale to x0 at the last; `adapter.process` turns eps/v predictions into x0.
        x0 = self.sample_latents(denoiser, schedule, cond.batch_size, adapter.latent_channels, generator, device, dtype,
                                 latents, upsample_mode, callback, process=getattr(adapter, "process", None))
        images = self.decode_latents(x0, output_type)
        self.maybe_free_model_hooks()
        return images

    def compile(self, enabled: bool = True, mode: Optional[str] = None):
        """Sample through `torch.compile` with one static graph per scale (the fast path).

        The first call at each scale (and batch size) compiles; its wall time goes to
        `compile_seconds`, so it can be reported apart from per-image time. mode: torch.compile's
        mode; default 'reduce-overhead' on CUDA (CUDA graphs captured by torch), inductor's
        default on the CPU. `compile(False)` returns to eager. Returns the pipeline.
        """
        self._compile = bool(enabled)
        self._compile_mode = mode
        self._compiled = None
        return self

    @property
    def compile_seconds(self) -> dict[str, float]:
        """Wall seconds of the first call at each latent size ('BxHxW'), i.e. compilation; {} if eager."""
        from swd.models.compiled import compile_seconds_by_size

        compiled = getattr(self, "_compiled", None)
        return compile_seconds_by_size(compiled) if compiled is not None else {}

    def fast_adapter(self, adapter, device):
        """The adapter itself, or its compiled wrapper after `compile()` (kept across calls, so
        each shape compiles once)."""
        if not getattr(self, "_compile", False):
            return adapter
        from swd.models.compiled import CompiledAdapter

        cached = getattr(self, "_compiled", None)
        if cached is None or not _same_model(cached.adapter, adapter):
            cached = self._compiled = CompiledAdapter(adapter, device, getattr(self, "_compile_mode", None))
        return cached

    def decode_latents(self, latents: torch.Tensor, output_type: str = "pil"):
        """Latents (B, C, h, w) -> images of size (h, w) * vae_scale_factor; 'latent' returns them as is.

        The VAE sees `latents / scaling_factor + shift_factor` (SWD_SPEC section 3, step 4).
        """
        if output_type == "latent":
            return latents
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        z = latents / config.scaling_factor + shift
        image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return self.image_processor.postprocess(image, output_type=output_type)


__all__ = [
    "OPTIONAL_COMPONENTS",
    "OUTPUT_TYPES",
    "SwDPipelineMixin",
    "SCHEDULE_FILE",
    "ScaleWisePipelineMixin",
    "ScheduleArg",
    "check_choice",
    "check_common",
    "check_count",
    "check_generator",
    "check_guidance",
    "check_latents",
    "check_max_sequence_length",
    "check_vae_channels",
    "describe",
    "prompt_count",
    "prompt_denoiser",
    "check_embed_widths",
    "check_negative_prompts",
    "check_prompts",
    "check_image_size",
    "check_schedule",
    "schedule_beside",
    "schedule_config",
    "unwrap_transformer",
]
