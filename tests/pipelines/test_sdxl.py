"""SwDStableDiffusionXLPipeline on tiny random SDXL components (two CLIPs, text_time UNet, VAE)."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, LCMScheduler, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor

from swd.errors import SwdError
from swd.models import TextCondition
from swd.models.unet import UNetAdapter
from swd.pipelines import SwDStableDiffusionXLPipeline
from swd.sampling import conditioned, sample_scalewise
from swd.schedules import CHECKPOINTS, PRESETS, ScaleSchedule

from tests.pipelines import SDXL_POOLED, SDXL_TEXT, VAE_FACTOR, embeddings, quiet, sample, sdxl_components

# The authors' SDXL sigmas at tiny sizes: latent 8 -> 16 (image 16 -> 32 px).
TINY_SDXL = ScaleSchedule(scales=(8, 10, 12, 16), sigmas=(1.0, 0.8, 0.6, 0.4), name="tiny-sdxl-4")
# `embeddings(batch)` gives (B, 5, 16) states and (B, 8) pooled vectors: SDXL_TEXT and SDXL_POOLED.


def make_pipe(with_text=True, **extra):
    return quiet(SwDStableDiffusionXLPipeline(**sdxl_components(with_text), **extra))


def run(pipe, seed=0, **kwargs):
    return sample(pipe, TINY_SDXL, seed, **kwargs)


def test_four_scales_from_the_first_size_to_the_last(pipe):
    seen = []
    images = run(pipe, prompt=["a red cat", "a dog"], num_images_per_prompt=2, output_type="pt",
                 callback=lambda step, x, sigma, x0: seen.append((tuple(x.shape), sigma)))
    assert images.shape == (4, 3, 16 * VAE_FACTOR, 16 * VAE_FACTOR) and 0 <= images.min() and images.max() <= 1
    assert seen == [((4, 4, s, s), sigma) for s, sigma in zip((8, 10, 12, 16), TINY_SDXL.sigmas)]
    assert run(pipe, prompt="a cat", output_type="pil")[0].size == (32, 32)
    a, b = run(pipe, prompt="a cat", output_type="np"), run(pipe, prompt="a cat", output_type="np")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - run(pipe, prompt="a cat", output_type="np", seed=1)).max() > 1e-3


@torch.no_grad()
def test_prompts_go_through_diffusers_sdxl_encode_prompt_and_the_one_sampler(pipe):
    reference = StableDiffusionXLPipeline(scheduler=EulerDiscreteScheduler(), add_watermarker=False, **sdxl_components())
    embeds, _, pooled, _ = reference.encode_prompt(["a red cat", "a dog"], device="cpu", num_images_per_prompt=1,
                                                   do_classifier_free_guidance=False)
    assert embeds.shape == (2, 8, SDXL_TEXT) and pooled.shape == (2, SDXL_POOLED)  # CLIP L (8) + CLIP G (8) states
    ours = run(pipe, prompt=["a red cat", "a dog"], seed=3)
    adapter = UNetAdapter(pipe.unet, prediction="epsilon", vae_scale_factor=VAE_FACTOR)
    expected = sample_scalewise(conditioned(adapter, TextCondition(embeds, pooled)), TINY_SDXL, 2, 4,
                                generator=torch.Generator().manual_seed(3), process=adapter.process)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@torch.no_grad()
def test_v_prediction_scheduler_config_gives_lcm_stepping():
    """The scheduler's config picks the process: a v-prediction DDPMScheduler makes the pipeline at one
    scale equal diffusers' LCMScheduler loop on the UNet with the same noise."""
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction")
    pipe = make_pipe(with_text=False, scheduler=scheduler)
    embeds, pooled = embeddings(2)
    ours = run(pipe, prompt_embeds=embeds, pooled_prompt_embeds=pooled, seed=5,
               schedule=ScaleSchedule(scales=(12,) * 4, sigmas=TINY_SDXL.sigmas))

    lcm = LCMScheduler.from_config(scheduler.config)
    lcm.set_timesteps(timesteps=[999, 800, 600, 400])
    generator = torch.Generator().manual_seed(5)
    x = randn_tensor((2, 4, 12, 12), generator=generator)
    time_ids = torch.tensor([[24.0, 24, 0, 0, 24, 24]] * 2)
    for t in lcm.timesteps:
        v = pipe.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        x = lcm.step(v, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-5)


def test_the_authors_sdxl_call_runs_with_only_the_import_changed(pipe):
    sigmas = [1.0, 0.8, 0.6, 0.4, 0.0]
    theirs = run(pipe, prompt="a cat", schedule=None, timesteps=torch.tensor(sigmas) * 1000, scales=[8, 10, 12, 16],
                 height=16 * VAE_FACTOR, width=16 * VAE_FACTOR, guidance_scale=1.0)
    torch.testing.assert_close(theirs, run(pipe, prompt="a cat"), rtol=0, atol=0)
    assert PRESETS["sdxl-4"].sigmas == (1.0, 0.8, 0.6, 0.4) and PRESETS["sdxl-4"].scales[-1] == (128, 128)
    assert CHECKPOINTS["sdxl-4"] == "yresearch/swd-sdxl" and SwDStableDiffusionXLPipeline.default_schedule == "sdxl-4"
    with pytest.raises(SwdError, match="height, width"):
        run(pipe, prompt="a cat", height=1024, width=1024)
    with pytest.raises(SwdError, match="timesteps"):
        run(pipe, prompt="a cat", timesteps=[999, 500, 300, 100])


def test_guidance_batches_a_negative_prompt(pipe):
    embeds, pooled = embeddings(2)
    plain = run(pipe, prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    same = run(pipe, prompt_embeds=embeds, pooled_prompt_embeds=pooled, guidance_scale=3.0,
               negative_prompt_embeds=embeds, negative_pooled_prompt_embeds=pooled)
    torch.testing.assert_close(same, plain, rtol=1e-5, atol=1e-4)
    assert (run(pipe, prompt="a cat", guidance_scale=3.0) - run(pipe, prompt="a cat")).abs().max() > 1e-3


def test_loads_a_standard_sdxl_folder(tmp_path, pipe):
    StableDiffusionXLPipeline(scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                               beta_end=0.012), add_watermarker=False,
                              **sdxl_components()).save_pretrained(tmp_path / "sdxl")
    loaded = SwDStableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.noise_process().prediction == "epsilon"
    torch.testing.assert_close(run(loaded, prompt="a cat"), run(pipe, prompt="a cat"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=None), "prompt"),
    (dict(prompt="a", upsample_mode="area"), "upsample_mode"),
    (dict(prompt="a", guidance_scale=-1), "guidance_scale"),
    (dict(prompt="a", schedule="no-such-preset"), "schedule"),
    (dict(prompt="a", schedule=ScaleSchedule(scales=(9, 16), sigmas=(1.0, 0.5))), "divisible"),
    (dict(prompt_embeds=torch.zeros(1, 5, 3), pooled_prompt_embeds=torch.zeros(1, SDXL_POOLED)), "prompt_embeds"),
])
def test_check_inputs_names_the_field(pipe, kwargs, message):
    with pytest.raises(SwdError, match=message):
        run(pipe, **kwargs)


def test_without_text_encoders_embeddings_are_required():
    with pytest.raises(SwdError, match="no CLIP text encoders"):
        run(make_pipe(with_text=False), prompt="a cat")


def test_negative_embeddings_of_another_shape_are_one_line(pipe):
    embeds, pooled = embeddings(1)  # 5 tokens
    longer = torch.zeros(1, 6, SDXL_TEXT)
    with pytest.raises(SwdError, match=r"negative_prompt_embeds: shape \(1, 6, 16\) does not match prompt_embeds"):
        run(pipe, prompt_embeds=embeds, pooled_prompt_embeds=pooled, guidance_scale=3.0,
            negative_prompt_embeds=longer, negative_pooled_prompt_embeds=pooled)
    # Against prompts the pipeline encodes itself (8 CLIP tokens), found once they are encoded.
    with pytest.raises(SwdError, match=r"negative_prompt_embeds: shape \(1, 5, 16\) does not match the encoded prompts"):
        run(pipe, prompt="a cat", guidance_scale=3.0, negative_prompt_embeds=embeds, negative_pooled_prompt_embeds=pooled)
