"""SwDStableDiffusion3Pipeline on tiny random components."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler, StableDiffusion3Pipeline
from diffusers.utils.torch_utils import randn_tensor

from swd.errors import SwdError
from swd.lora import load_lora, lora_config, save_lora
from swd.pipelines import SwDStableDiffusion3Pipeline
from swd.schedules import ScaleSchedule

from tests.pipelines import T5_LENGTH, TINY_SCHEDULE, VAE_FACTOR, embeddings, quiet, sample, sd3_components
from tests.test_lora import randomize_lora


def make_pipe(**parts):
    return quiet(SwDStableDiffusion3Pipeline(**(parts or sd3_components())))


def run(pipe, seed=0, **kwargs):
    return sample(pipe, TINY_SCHEDULE, seed, text_length=T5_LENGTH, **kwargs)


def test_images_have_the_last_scale_size_and_steps_start_at_the_first(pipe):
    seen = []
    images = run(pipe, prompt=["a red cat", "a dog"], num_images_per_prompt=2, output_type="pt",
                 callback=lambda step, x, sigma, x0: seen.append((tuple(x.shape), sigma)))
    assert images.shape == (4, 3, 24 * VAE_FACTOR, 24 * VAE_FACTOR)
    assert 0 <= images.min() and images.max() <= 1
    assert seen == [((4, 4, s, s), sigma) for s, sigma in zip((8, 12, 16, 24), TINY_SCHEDULE.sigmas)]
    assert run(pipe, prompt="a cat", output_type="np").shape == (1, 48, 48, 3)
    assert run(pipe, prompt="a cat", output_type="pil")[0].size == (48, 48)
    assert run(pipe, prompt="a cat").shape == (1, 4, 24, 24)


def test_a_seed_gives_the_same_images_and_another_seed_others(pipe):
    a = run(pipe, prompt="a red cat", output_type="np")
    b = run(pipe, prompt="a red cat", output_type="np")
    c = run(pipe, prompt="a red cat", output_type="np", seed=1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2


@torch.no_grad()
def test_latents_match_a_hand_loop_with_diffusers_flow_match_lcm_scheduler(pipe):
    prompt_embeds, pooled = embeddings(2)
    ours = run(pipe, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, seed=42)

    scales = [h for h, _ in TINY_SCHEDULE.scales]
    scheduler = FlowMatchLCMScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=list(TINY_SCHEDULE.sigmas))
    scheduler.set_scale_factors(scale_factors=[s / scales[0] for s in scales[1:]], upscale_mode="bicubic")
    generator = torch.Generator().manual_seed(42)
    x = randn_tensor((2, 4, scales[0], scales[0]), generator=generator)
    for t in scheduler.timesteps:
        v = pipe.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=prompt_embeds,
                             pooled_projections=pooled, return_dict=False)[0]
        x = scheduler.step(v, t, x, generator=generator).prev_sample
    assert x.shape == ours.shape == (2, 4, 24, 24)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-4)


@torch.no_grad()
def test_decode_undoes_scaling_and_shift(pipe):
    prompt_embeds, pooled = embeddings(1)
    latents = run(pipe, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled)
    images = run(pipe, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, output_type="pt")
    vae = pipe.vae
    decoded = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1))


def test_prompts_go_through_diffusers_encode_prompt(pipe):
    reference = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), **sd3_components())
    prompts = ["a red cat", "a photo of a dog"]
    embeds, _, pooled, _ = reference.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                                   max_sequence_length=T5_LENGTH)
    assert embeds.shape == (2, 8 + T5_LENGTH, 16) and pooled.shape == (2, 8)
    from_text = run(pipe, prompt=prompts, num_images_per_prompt=2)
    from_embeds = run(pipe, prompt_embeds=embeds.repeat_interleave(2, 0), pooled_prompt_embeds=pooled.repeat_interleave(2, 0))
    torch.testing.assert_close(from_text, from_embeds)
    # Precomputed embeddings get per-image copies too (p0, p0, p1, p1).
    torch.testing.assert_close(run(pipe, prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_images_per_prompt=2), from_text)


def test_guidance_is_off_by_default_and_batches_a_negative_prompt(pipe):
    prompt_embeds, pooled = embeddings(2)
    plain = run(pipe, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled)
    # CFG against the prompt itself: v_uncond == v_cond, so any scale gives the unguided result.
    same = run(pipe, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, guidance_scale=4.0,
               negative_prompt_embeds=prompt_embeds, negative_pooled_prompt_embeds=pooled)
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-5)
    empty = run(pipe, prompt=["a red cat", "a dog"], guidance_scale=4.0)  # the empty negative prompt
    assert (empty - run(pipe, prompt=["a red cat", "a dog"])).abs().max() > 1e-2


def test_student_lora_loaded_by_us_or_by_diffusers_mixin(tmp_path):
    source = sd3_components(with_text=False)["transformer"]
    source.add_adapter(lora_config("sd3", rank=4, alpha=8))
    randomize_lora(source)
    save_lora(source, tmp_path / "comfy.safetensors", format="comfyui")
    save_lora(source, tmp_path / "diffusers", format="diffusers")
    prompt_embeds, pooled = embeddings(1)
    args = dict(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled)

    ours, theirs = make_pipe(**sd3_components(with_text=False)), make_pipe(**sd3_components(with_text=False))
    base = run(ours, **args)
    load_lora(ours.transformer, tmp_path / "comfy.safetensors")
    theirs.load_lora_weights(tmp_path / "diffusers")  # StableDiffusion3Pipeline's own LoRA loader
    with_lora = run(ours, **args)
    torch.testing.assert_close(with_lora, run(theirs, **args), rtol=0, atol=1e-5)
    assert (with_lora - base).abs().max() > 1e-3


def test_loads_a_standard_sd3_folder(tmp_path, pipe):
    parts = sd3_components()
    StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **parts).save_pretrained(tmp_path / "sd3")
    loaded = SwDStableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler)  # loaded, unused
    expected = run(pipe, prompt="a red cat")
    torch.testing.assert_close(run(loaded, prompt="a red cat"), expected)
    # Our own folder (no scheduler, no T5) round-trips too.
    parts.pop("text_encoder_3"), parts.pop("tokenizer_3")
    make_pipe(**parts).save_pretrained(tmp_path / "swd")
    again = SwDStableDiffusion3Pipeline.from_pretrained(tmp_path / "swd")
    assert again.scheduler is None and again.text_encoder_3 is None
    assert run(again, prompt="a cat").shape == (1, 4, 24, 24)


def test_default_schedule_is_the_large_preset(pipe):
    assert SwDStableDiffusion3Pipeline.default_schedule == "sd35-large-4"
    with pytest.raises(SwdError, match=r"scales\[0\]: 64x64 exceeds the transformer's largest latent side 32"):
        pipe(prompt="a cat", output_type="latent")


def _bad_calls():
    pe, pp = embeddings(2)
    return {
        "scale not divisible": (dict(schedule=ScaleSchedule(scales=(8, 13), sigmas=(1.0, 0.5)), prompt="a"),
                                r"scales\[1\]: 13x13 is not divisible by the transformer's patch size 2"),
        "scale beyond pos_embed_max_size": (dict(schedule=ScaleSchedule(scales=(8, 40), sigmas=(1.0, 0.5)), prompt="a"),
                                            r"scales\[1\]: 40x40 exceeds the transformer's largest latent side 32"),
        "unknown preset": (dict(schedule="sd35-huge", prompt="a"), "unknown preset 'sd35-huge'"),
        "neither": (dict(), "give a prompt .* or prompt_embeds"),
        "both": (dict(prompt="a", prompt_embeds=pe, pooled_prompt_embeds=pp), "prompt and prompt_embeds: give either"),
        "embeds without pooled": (dict(prompt_embeds=pe), "pooled_prompt_embeds: required"),
        "batch mismatch": (dict(prompt_embeds=pe, pooled_prompt_embeds=pp[:1]), "batch sizes differ"),
        "prompt_2 count": (dict(prompt=["a", "b"], prompt_2=["c"]), "prompt_2: 1 prompt"),
        "prompt type": (dict(prompt=3), "prompt: expected a str or a non-empty list"),
        "embed width": (dict(prompt_embeds=pe[..., :8], pooled_prompt_embeds=pp), "last dimension 8 .* 16"),
        "negative batch": (dict(prompt_embeds=pe, pooled_prompt_embeds=pp, guidance_scale=2.0,
                                negative_prompt_embeds=pe[:1], negative_pooled_prompt_embeds=pp[:1]),
                           "negative_prompt_embeds: batch of 1 for 2"),
        "negative prompts count": (dict(prompt=["a", "b"], guidance_scale=2.0, negative_prompt=["x", "y", "z"]),
                                   "negative_prompt: 3 negative"),
        "guidance below one": (dict(prompt="a", guidance_scale=0.0), "guidance_scale: expected a number >= 1"),
        "output type": (dict(prompt="a", output_type="jpeg"), "output_type: unknown 'jpeg'"),
        "generator list": (dict(prompt="a", generator=[torch.Generator()]), "generator: expected one torch.Generator"),
        "latents shape": (dict(prompt="a", latents=torch.zeros(1, 4, 24, 24)), r"latents: .*\(1, 4, 8, 8\)"),
        "images per prompt": (dict(prompt="a", num_images_per_prompt=0), "num_images_per_prompt"),
        "upsample mode": (dict(prompt="a", upsample_mode="area"), "upsample_mode: unknown 'area'"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_check_inputs_names_the_field(pipe, case):
    kwargs, message = _bad_calls()[case]
    kwargs.setdefault("schedule", TINY_SCHEDULE)
    with pytest.raises(SwdError, match=message):
        pipe(output_type=kwargs.pop("output_type", "latent"), **kwargs)


def test_without_text_encoders_embeddings_are_required():
    bare = make_pipe(**sd3_components(with_text=False))
    with pytest.raises(SwdError, match="no CLIP text encoders"):
        bare(prompt="a cat", schedule=TINY_SCHEDULE)
    pe, pp = embeddings(1)
    with pytest.raises(SwdError, match="guidance_scale > 1 needs negative embeddings"):
        bare(prompt_embeds=pe, pooled_prompt_embeds=pp, guidance_scale=3.0, schedule=TINY_SCHEDULE)
    assert run(bare, prompt_embeds=pe, pooled_prompt_embeds=pp).shape == (1, 4, 24, 24)


def test_negative_embeddings_of_another_shape_are_one_line(pipe):
    pe, pp = embeddings(1)  # 5 tokens
    with pytest.raises(SwdError, match=r"negative_prompt_embeds: shape \(1, 6, 16\) does not match prompt_embeds"):
        run(pipe, prompt_embeds=pe, pooled_prompt_embeds=pp, guidance_scale=3.0,
            negative_prompt_embeds=torch.zeros(1, 6, 16), negative_pooled_prompt_embeds=pp)
    # Against prompts the pipeline encodes itself (8 CLIP + 6 T5 tokens), found once they are encoded.
    with pytest.raises(SwdError, match=r"negative_prompt_embeds: shape \(1, 5, 16\) does not match the encoded prompts"):
        run(pipe, prompt="a cat", guidance_scale=3.0, negative_prompt_embeds=pe, negative_pooled_prompt_embeds=pp)
