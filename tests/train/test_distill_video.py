"""The SwD trainer on video: tiny random Wan transformer + AutoencoderKLWan, moving-shapes clips,
spatio-temporal training pairs, mmd-only and swd objectives; the Wan2.1 dry run."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from swd.config import from_dict
from swd.data.moving_shapes import generate_clips, render_clips
from swd.models import TextCondition
from swd.models.configs import ARCHS
from swd.runtime import resize_clip
from swd.sampling import upsample_video
from swd.schedules import ScaleSchedule
from swd.train.common import CaptionedData
from swd.train.distill import DistillConfig, make_scale_batch, train_distill
from swd.train.latents import VideoVaeSpace

# Latent (1, 2, 2) -> (3, 4, 4): 1x16x16 -> 9x32x32 px, the moving-shapes clip size.
SCHED = {"scales": [[1, 2, 2], [2, 2, 2], [2, 4, 4], [3, 4, 4]], "sigmas": [1.0, 0.8959, 0.7371, 0.6022]}


def tiny_video_vae():
    torch.manual_seed(3)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_teacher():
    torch.manual_seed(0)
    return ARCHS["tiny-wan"].build()


def clip_data(n=6):
    """Moving-shapes clips (N, 3, 9, 32, 32) in [-1, 1], each caption a fixed random (6, 16) embedding."""
    samples = generate_clips(n, seed=2)
    clips = torch.from_numpy(render_clips(samples)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    captions = [s.caption for s in samples]
    states = torch.stack([torch.randn(6, 16, generator=torch.Generator().manual_seed(i)) for i in range(n)])
    none = torch.zeros(n, 0)
    return CaptionedData(
        train_images=clips, train_caption_index=torch.arange(n), caption_states=states, caption_pooled=none,
        empty_states=torch.zeros(1, 6, 16), empty_pooled=torch.zeros(1, 0), heldout_captions=captions[:2],
        heldout_states=states[:2], heldout_pooled=none[:2], heldout_images=clips[:2], train_captions=captions,
    )


def config(tmp_path, run, objective, steps=3, lora=0):
    sched_file = tmp_path / "sched.yaml"
    ScaleSchedule(**SCHED, name="tiny-video").save(sched_file)
    return from_dict(DistillConfig, {
        "run_dir": str(tmp_path / run), "schedule": str(sched_file), "objective": objective,
        "model": {"arch": "tiny-wan"}, "losses": {"teacher_cfg": 2.0, "feature_block": 1},
        "generator": {"lora_rank": lora, "lr": 1e-3}, "fake": {"lora_rank": lora, "lr": 1e-3},
        "train": {"steps": steps, "batch_size": 2, "fake_updates": 1, "device": "cpu", "precision": "fp32",
                  "log_every": 1, "sample_every": 3, "checkpoint_every": 3},
    })


def test_resize_clip_by_hand():
    clips = torch.arange(9, dtype=torch.float32).view(1, 1, 9, 1, 1).expand(1, 3, 9, 4, 4)
    # 9 -> 5 frames keeps frames 0, 2, 4, 6, 8; 9 -> 4 frames samples times 0, 8/3, 16/3, 8 linearly
    assert resize_clip(clips, (5, 4, 4))[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6, 8]
    assert resize_clip(clips, (4, 4, 4))[0, 0, :, 0, 0].tolist() == pytest.approx([0, 8 / 3, 16 / 3, 8])
    img = torch.rand(1, 3, 1, 4, 4).expand(1, 3, 5, 4, 4)
    small = resize_clip(img, (5, 2, 2))
    torch.testing.assert_close(small[:, :, 0], torch.nn.functional.avg_pool2d(img[:, :, 0], 2))


def test_video_training_pair_downscales_pixels_then_encodes():
    vae = tiny_video_vae()
    space = VideoVaeSpace(vae)
    clips = clip_data(2).train_images
    schedule = ScaleSchedule(**SCHED)
    cond = TextCondition(torch.zeros(2, 6, 16), torch.zeros(2, 0))
    batch = make_scale_batch(clips, cond, schedule, 2, torch.Generator().manual_seed(0), "cpu", space)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)

    def encode(x):
        with torch.no_grad():
            return (vae.encode(x).latent_dist.mode() - mean) / std

    # scale 2 is latent (2, 4, 4) = 5 x 32 x 32 px: frames 0, 2, 4, 6, 8 of the 9-frame clip
    target = encode(clips[:, :, ::2])
    lower = encode(torch.nn.functional.interpolate(clips[:, :, ::2].transpose(1, 2).flatten(0, 1), size=16,
                                                   mode="area").view(2, 5, 3, 16, 16).transpose(1, 2))
    assert target.shape == (2, 16, 2, 4, 4) and lower.shape == (2, 16, 2, 2, 2)
    torch.testing.assert_close(batch.target, target, rtol=0, atol=1e-5)
    eps = torch.randn(2, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    sigma = schedule.sigmas[2]
    torch.testing.assert_close(batch.x_in, (1 - sigma) * upsample_video(lower, (2, 4, 4)) + sigma * eps,
                               rtol=0, atol=1e-5)
    assert space.pixel_size((3, 4, 4)) == (9, 32, 32)
    torch.testing.assert_close(space.decode(space.encode(clips)), vae.decode(encode(clips) * std + mean).sample)


@pytest.mark.parametrize("objective", ["mmd-only", "swd"])
def test_three_steps_end_to_end_on_tiny_wan(tmp_path, objective):
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = train_distill(config(tmp_path, objective, objective), data=clip_data(), teacher=teacher,
                           vae=tiny_video_vae())
    log = [json.loads(line) for line in (tmp_path / objective / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    keys = ("mmd",) if objective == "mmd-only" else ("dmd", "mmd", "gan", "fake", "disc")
    for record in log:
        for key in (*keys, "grad_norm"):
            assert np.isfinite(record[key]), (key, record)
    assert (tmp_path / objective / "samples" / "step_00000003.png").exists()
    exported = load_file(str(result.export_dir / "diffusion_pytorch_model.safetensors"))
    assert set(exported) == set(before)
    assert any(not torch.equal(exported[k], before[k]) for k in exported)  # the student moved
    assert ScaleSchedule.load(result.export_dir / "schedule.yaml").scales[-1] == (3, 4, 4)


def test_lora_student_on_tiny_wan(tmp_path):
    teacher = tiny_teacher()
    result = train_distill(config(tmp_path, "lora", "mmd-only", steps=2, lora=4), data=clip_data(), teacher=teacher,
                           vae=tiny_video_vae())
    lora = load_file(str(result.lora_dir / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("transformer.") for k in lora)
    assert any(".ffn.net.0.proj." in k for k in lora) and any(".attn2.to_k." in k for k in lora)


def test_image_data_with_a_video_schedule_is_refused(tmp_path):
    from swd.errors import SwdError

    data = clip_data()
    data.train_images = data.train_images[:, :, 0]
    with pytest.raises(SwdError, match="clips"):
        train_distill(config(tmp_path, "bad", "mmd-only"), data=data, teacher=tiny_teacher(), vae=tiny_video_vae())


@pytest.mark.parametrize("arch, total", [("wan2.1-1.3b", (9, 11)), ("wan2.1-14b", (50, 60))])
def test_wan_dry_run_with_lora(tmp_path, capsys, arch, total):
    from swd.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model:\n  arch: {arch}\nobjective: mmd-only\ngenerator:\n  lora_rank: 64\n"
                      "train:\n  batch_size: 1\n  gradient_checkpointing: true\n")
    assert main(["distill", "--config", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "latent 21x60x104" in out and "S = 33272 tokens" in out  # 21 * 30 * 52 + 512
    gib = float(out.split("total (estimate)")[1].split("GiB")[0])
    assert total[0] < gib < total[1]


def test_pixel_space_video_pairs_use_uniform_time():
    # The moving-shapes teacher works on pixel clips: no causal first frame, so frames grow "uniform".
    from swd.train.latents import PixelSpace

    clips = clip_data(2).train_images
    schedule = ScaleSchedule(scales=[(3, 16, 16), (5, 20, 20)], sigmas=[1.0, 0.8])
    cond = TextCondition(torch.zeros(2, 6, 16), torch.zeros(2, 0))
    batch = make_scale_batch(clips, cond, schedule, 1, torch.Generator().manual_seed(0), "cpu", PixelSpace())
    torch.testing.assert_close(batch.target, resize_clip(clips, (5, 20, 20)))
    lower = resize_clip(clips, (3, 16, 16))  # frames 0, 4, 8
    assert torch.equal(lower[:, :, 1], torch.nn.functional.interpolate(clips[:, :, 4], size=16, mode="area"))
    eps = torch.randn(2, 3, 5, 20, 20, generator=torch.Generator().manual_seed(0))
    up = upsample_video(lower, (5, 20, 20), "bicubic", "uniform")
    torch.testing.assert_close(batch.x_in, 0.2 * up + 0.8 * eps)
