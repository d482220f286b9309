"""SwDFluxPipeline on tiny random components."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler, FluxPipeline
from diffusers.utils.torch_utils import randn_tensor

from swd.errors import SwdError
from swd.pipelines import SwDFluxPipeline
from swd.schedules import ScaleSchedule

from tests.pipelines import T5_LENGTH, TINY_SCHEDULE, VAE_FACTOR, embeddings, flux_components, quiet, sample


def make_pipe(**parts):
    return quiet(SwDFluxPipeline(**(parts or flux_components())))


def run(pipe, seed=0, **kwargs):
    return sample(pipe, TINY_SCHEDULE, seed, text_length=T5_LENGTH, **kwargs)


def test_images_have_the_last_scale_size_and_steps_start_at_the_first(pipe):
    seen = []
    images = run(pipe, prompt=["a red cat", "a dog"], num_images_per_prompt=2, output_type="pt",
                 callback=lambda step, x, sigma, x0: seen.append(tuple(x.shape)))
    assert images.shape == (4, 3, 24 * VAE_FACTOR, 24 * VAE_FACTOR)
    assert seen == [(4, 4, s, s) for s in (8, 12, 16, 24)]
    assert run(pipe, prompt="a cat", output_type="pil")[0].size == (48, 48)
    assert run(pipe, prompt="a cat").shape == (1, 4, 24, 24)  # unpacked latents


def test_a_seed_gives_the_same_images_and_another_seed_others(pipe):
    a = run(pipe, prompt="a red cat", output_type="np")
    np.testing.assert_array_equal(a, run(pipe, prompt="a red cat", output_type="np"))
    assert np.abs(a - run(pipe, prompt="a red cat", output_type="np", seed=1)).max() > 1e-2


@torch.no_grad()
def test_latents_match_a_hand_loop_with_diffusers_flow_match_lcm_scheduler(pipe):
    """diffusers' scheduler upsamples and re-noises; diffusers' FluxPipeline helpers pack and build ids."""
    prompt_embeds, pooled = embeddings(2)
    ours = run(pipe, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, seed=42, guidance_scale=3.5)

    scales = [h for h, _ in TINY_SCHEDULE.scales]
    scheduler = FlowMatchLCMScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=list(TINY_SCHEDULE.sigmas))
    scheduler.set_scale_factors(scale_factors=[s / scales[0] for s in scales[1:]], upscale_mode="bicubic")
    generator = torch.Generator().manual_seed(42)
    x = randn_tensor((2, 4, scales[0], scales[0]), generator=generator)
    for t in scheduler.timesteps:
        h, w = x.shape[-2:]
        out = pipe.transformer(
            hidden_states=FluxPipeline._pack_latents(x, 2, 4, h, w), timestep=(t / 1000).expand(2),
            guidance=torch.full((2,), 3.5), pooled_projections=pooled, encoder_hidden_states=prompt_embeds,
            txt_ids=torch.zeros(prompt_embeds.shape[1], 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(2, h // 2, w // 2, "cpu", torch.float32),
            return_dict=False)[0]
        v = FluxPipeline._unpack_latents(out, h, w, 1)  # factor 1: sizes given in latent pixels
        x = scheduler.step(v, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-4)


def test_prompts_go_through_diffusers_encode_prompt(pipe):
    reference = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), **flux_components())
    prompts = ["a red cat", "a photo of a dog"]
    embeds, pooled, _ = reference.encode_prompt(prompts, None, max_sequence_length=T5_LENGTH)
    assert embeds.shape == (2, T5_LENGTH, 16) and pooled.shape == (2, 8)
    torch.testing.assert_close(run(pipe, prompt=prompts, num_images_per_prompt=2),
                               run(pipe, prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_images_per_prompt=2))


def test_embedded_guidance_defaults_to_the_teacher_value(pipe):
    assert SwDFluxPipeline.default_schedule == "flux-dev-4"
    pe, pp = embeddings(1)
    default = run(pipe, prompt_embeds=pe, pooled_prompt_embeds=pp)
    torch.testing.assert_close(default, run(pipe, prompt_embeds=pe, pooled_prompt_embeds=pp, guidance_scale=4.5))
    assert (default - run(pipe, prompt_embeds=pe, pooled_prompt_embeds=pp, guidance_scale=1.0)).abs().max() > 1e-4


def test_loads_a_standard_flux_folder(tmp_path, pipe):
    FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), **flux_components()).save_pretrained(tmp_path / "flux")
    loaded = SwDFluxPipeline.from_pretrained(tmp_path / "flux")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, prompt="a red cat"), run(pipe, prompt="a red cat"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule=ScaleSchedule(scales=(8, 9), sigmas=(1.0, 0.5)), prompt="a"),
     r"scales\[1\]: 9x9 is not divisible by the transformer's patch size 2"),
    (dict(prompt_embeds=embeddings(1)[0]), "pooled_prompt_embeds: required"),
    (dict(prompt="a", prompt_embeds=embeddings(1)[0], pooled_prompt_embeds=embeddings(1)[1]), "give either"),
    (dict(prompt_embeds=embeddings(2)[0], pooled_prompt_embeds=embeddings(1)[1]), "batch sizes differ"),
    (dict(prompt="a", guidance_scale=-1.0), "guidance_scale"),
    (dict(prompt="a", max_sequence_length=600), "max_sequence_length"),
])
def test_check_inputs_names_the_field(pipe, kwargs, message):
    kwargs.setdefault("schedule", TINY_SCHEDULE)
    with pytest.raises(SwdError, match=message):
        pipe(output_type="latent", **kwargs)


def test_without_text_encoders_embeddings_are_required():
    bare = make_pipe(**flux_components(with_text=False))
    with pytest.raises(SwdError, match="no text encoders"):
        bare(prompt="a cat", schedule=TINY_SCHEDULE)
    pe, pp = embeddings(1)
    assert run(bare, prompt_embeds=pe, pooled_prompt_embeds=pp).shape == (1, 4, 24, 24)
