"""SwDWanPipeline on a tiny random WanTransformer3DModel, AutoencoderKLWan and UMT5 encoder."""

import pytest
import torch

from swd.errors import SwdError
from swd.models import WanAdapter, adapter_for
from swd.models.base import TextCondition
from swd.pipelines import SwDWanPipeline
from swd.sampling import upsample_video
from swd.schedules import ScaleSchedule
from swd.video import read_gif, save_video

from tests.pipelines import quiet, sample, wan_components, wan_transformer

# 4 scales, latent (1, 2, 2) -> (3, 4, 6): 1 -> 9 pixel frames, 16x16 -> 32x48 px.
VIDEO_SCHEDULE = ScaleSchedule(scales=[(1, 2, 2), (2, 2, 4), (2, 4, 4), (3, 4, 6)],
                               sigmas=[1.0, 0.8959, 0.7371, 0.6022], name="tiny-video-4")
TEXT_LEN = 6


def make_pipe(with_text=True):
    return quiet(SwDWanPipeline(**wan_components(with_text)))


def run(pipe, seed=0, **kwargs):
    return sample(pipe, VIDEO_SCHEDULE, seed, text_length=TEXT_LEN, **kwargs)


def embeds(batch, seed=7):
    return torch.randn(batch, TEXT_LEN, 16, generator=torch.Generator().manual_seed(seed))


def test_frames_have_the_last_scale_count_and_size(pipe):
    seen = []
    frames = run(pipe, prompt=["a red star moving right", "a blue cat"], num_videos_per_prompt=2, output_type="np",
                 callback=lambda step, x, sigma, x0: seen.append(tuple(x.shape)))
    assert seen == [(4, 16, *s) for s in VIDEO_SCHEDULE.scales]
    # last scale (3, 4, 6): 4 * (3 - 1) + 1 = 9 frames of 32 x 48 px
    assert frames.shape == (4, 9, 32, 48, 3)
    assert 0 <= frames.min() and frames.max() <= 1
    pil = run(pipe, prompt="a red star", output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 9 and pil[0][0].size == (48, 32)
    assert run(pipe, prompt="a red star").shape == (1, 16, 3, 4, 6)


def test_latents_equal_a_hand_loop_and_decode_undoes_normalisation(pipe):
    e = embeds(2)
    ours = run(pipe, prompt_embeds=e, seed=42)
    gen = torch.Generator().manual_seed(42)
    x = torch.randn(2, 16, *VIDEO_SCHEDULE.scales[0], generator=gen)
    for i, sigma in enumerate(VIDEO_SCHEDULE.sigmas):
        with torch.no_grad():
            v = pipe.transformer(hidden_states=x, timestep=torch.full((2,), 1000 * sigma), encoder_hidden_states=e,
                                 return_dict=False)[0]
        x0 = x - sigma * v
        if i + 1 < VIDEO_SCHEDULE.steps:
            up = upsample_video(x0, VIDEO_SCHEDULE.scales[i + 1])
            nxt = VIDEO_SCHEDULE.sigmas[i + 1]
            x = (1 - nxt) * up + nxt * torch.randn(up.shape, generator=gen)
    torch.testing.assert_close(ours, x0, rtol=0, atol=1e-5)
    video = run(pipe, prompt_embeds=e, seed=42, output_type="pt")  # (B, F, 3, H, W) in [0, 1]
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        ref = pipe.vae.decode(ours * std + mean).sample  # (B, 3, F, H, W) in [-1, 1]
    ref = ((ref.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(video, ref, rtol=0, atol=1e-5)


def test_prompt_equals_its_precomputed_embeddings(pipe):
    e, _ = pipe.encode_prompt("a red star", do_classifier_free_guidance=False, max_sequence_length=TEXT_LEN)
    a = run(pipe, prompt="a red star")
    b = run(pipe, prompt_embeds=e)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # float rounding of the re-run encoder only
    c = run(pipe, prompt="a blue cat")
    assert (a - c).abs().max() > 1e-3


def test_cfg_runs_and_differs(pipe):
    a = run(pipe, prompt="a red star", guidance_scale=5.0)
    b = run(pipe, prompt="a red star", guidance_scale=5.0, negative_prompt="a blue cat")
    c = run(pipe, prompt="a red star")
    assert a.shape == c.shape and (a - c).abs().max() > 1e-3 and (a - b).abs().max() > 1e-3


def test_without_text_encoder_embeddings_work_and_prompts_are_refused():
    pipe = make_pipe(with_text=False)
    assert run(pipe, prompt_embeds=embeds(1)).shape == (1, 16, 3, 4, 6)
    with pytest.raises(SwdError, match="prompt_embeds"):
        run(pipe, prompt="a red star")


@pytest.mark.parametrize("kwargs, field", [
    (dict(schedule="sd35-large-4"), "video model"),
    (dict(output_type="gif"), "output_type"),
    (dict(time_mode="cubic"), "time_mode"),
    (dict(guidance_scale=0.5), "guidance_scale"),
    (dict(latents=torch.zeros(1, 16, 2, 2, 2)), "latents"),
    (dict(prompt_embeds=torch.zeros(1, 4, 8)), "prompt_embeds"),
    (dict(schedule=ScaleSchedule(scales=[(1, 3, 2)], sigmas=[1.0])), "patch size"),
])
def test_bad_input_one_line(pipe, kwargs, field):
    kwargs.setdefault("prompt", None if "prompt_embeds" in kwargs else "a red star")
    with pytest.raises(SwdError, match=field):
        run(pipe, **kwargs)


def test_adapter_features_by_hook_equal_the_block_output():
    transformer = wan_transformer()
    adapter = adapter_for(transformer)
    assert isinstance(adapter, WanAdapter) and adapter.patch_size == (1, 2, 2)
    x = torch.randn(2, 16, 2, 4, 6)
    cond = TextCondition(embeds(2), torch.zeros(2, 0))
    seen = {}
    handle = transformer.blocks[1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        v, feats = adapter.velocity_and_features(x, torch.tensor([0.3, 0.9]), cond, block=1)
        only = adapter.features(x, torch.tensor([0.3, 0.9]), cond, block=1)
    handle.remove()
    assert feats.shape == (2, 2 * 2 * 3, 24)
    torch.testing.assert_close(feats, seen["out"], rtol=0, atol=0)
    torch.testing.assert_close(only, feats, rtol=0, atol=0)
    assert v.shape == x.shape
    assert adapter.feature_width(1) == 24
    assert type(transformer).forward is type(wan_transformer()).forward  # nothing patched


def test_gif_round_trip_and_mp4_refused_without_imageio(tmp_path, pipe):
    frames = run(pipe, prompt="a red star", output_type="np")[0]
    path = save_video(frames, tmp_path / "v.gif", fps=8)
    back = read_gif(path)
    assert back.shape == (9, 32, 48, 3)
    from swd.video import mp4_available

    if not mp4_available():
        with pytest.raises(SwdError, match="imageio"):
            save_video(frames, tmp_path / "v.mp4")
    with pytest.raises(SwdError, match="unknown video format"):
        save_video(frames, tmp_path / "v.avi")


def test_negative_embeddings_of_another_length_are_one_line(pipe):
    with pytest.raises(SwdError, match=r"negative_prompt_embeds: shape \(1, 4, 16\) does not match the encoded prompts"):
        run(pipe, prompt_embeds=embeds(1), guidance_scale=3.0, negative_prompt_embeds=torch.zeros(1, 4, 16))
