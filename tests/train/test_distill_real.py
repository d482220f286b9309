"""The SwD trainer on the real architectures' code paths: tiny random SD3 / FLUX with a VAE, LoRA
generator and fake, gradient checkpointing, precomputed prompt embeddings; and the dry run."""

import argparse
import json
import re

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from swd.config import from_dict
from swd.data.prompts import ImageSource, encode_prompt_dataset, load_prompt_embeddings
from swd.models import TextCondition
from swd.models.configs import ARCHS
from swd.schedules import ScaleSchedule
from swd.commands.train import _cmd_distill
from swd.train.distill import DistillConfig, make_scale_batch, resolve_config, train_distill
from swd.train.latents import VaeSpace

# Latent 8 -> 16 (pixels 16 -> 32 with the 2x VAE below).
SCHED = {"scales": [8, 12, 16], "sigmas": [1.0, 0.8, 0.6]}


def tiny_vae():
    torch.manual_seed(3)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         layers_per_block=1, norm_num_groups=8, sample_size=32,
                         scaling_factor=1.5, shift_factor=0.1).eval()


def tiny_teacher(arch):
    torch.manual_seed(0)
    return ARCHS[arch].build()


def text_encoder(captions):
    """Stand-in for the pipeline's text encoders: 6 tokens of width 16, pooled 8 (the tiny archs' sizes)."""
    out = [torch.randn(6 * 16 + 8, generator=torch.Generator().manual_seed(len(c) * 31 + sum(map(ord, c))))
           for c in captions]
    out = torch.stack(out)
    return out[:, :96].reshape(-1, 6, 16), out[:, 96:]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    np.save(root / "images.npy", np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    encode_prompt_dataset(root / "train.safetensors", ImageSource(root / "images.npy"),
                          [f"prompt {i % 3}" for i in range(6)], text_encoder, "sd3",
                          heldout_captions=["held a", "held b"], dtype="fp32")
    return root / "train.safetensors"


def config(tmp_path, run, arch, embeddings, steps=3, **train):
    sched_file = tmp_path / "sched.yaml"
    ScaleSchedule(**SCHED, name="tiny").save(sched_file)
    return from_dict(DistillConfig, {
        "run_dir": str(tmp_path / run), "schedule": str(sched_file), "objective": "swd",
        "model": {"arch": arch}, "data": {"name": "embeddings", "path": str(embeddings)},
        "losses": {"teacher_cfg": 2.0},
        "generator": {"lora_rank": 4, "lr": 1e-2}, "fake": {"lora_rank": 4, "lr": 1e-2},
        "train": {"steps": steps, "batch_size": 2, "fake_updates": 1, "device": "cpu", "precision": "fp32",
                  "gradient_checkpointing": True, "log_every": 1, "sample_every": 1000, "checkpoint_every": 2,
                  **train},
    })


def test_latent_training_pair_encodes_area_downscaled_pixels():
    vae = tiny_vae()
    space = VaeSpace(vae)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    cond = TextCondition(torch.zeros(2, 6, 16), torch.zeros(2, 8))
    batch = make_scale_batch(images, cond, ScaleSchedule(**SCHED), 1, torch.Generator().manual_seed(0), "cpu", space)
    encode = lambda x: (vae.encode(x).latent_dist.mode() - 0.1) * 1.5
    with torch.no_grad():
        target = encode(torch.nn.functional.interpolate(images, size=(24, 24), mode="area"))
        lower = encode(torch.nn.functional.interpolate(images, size=(16, 16), mode="area"))
    eps = torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.target, target)
    up = torch.nn.functional.interpolate(lower, size=(12, 12), mode="bicubic", align_corners=False)
    torch.testing.assert_close(batch.x_in, 0.2 * up + 0.8 * eps)
    assert space.downsample == 2 and space.pixel_size((12, 12)) == (24, 24)


@pytest.mark.parametrize("arch", ["tiny-sd3", "tiny-flux"])
def test_three_lora_steps_on_a_latent_model_then_resume(tmp_path, arch, embeddings):
    teacher = tiny_teacher(arch)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = train_distill(config(tmp_path, "a", arch, embeddings), teacher=teacher, vae=tiny_vae())

    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and [r["scale"] for r in log] == [8, 12, 16]
    for record in log:
        for key in ("dmd", "mmd", "gan", "fake", "disc", "grad_norm"):
            assert np.isfinite(record[key]), (key, record)

    # The frozen base (shared by teacher, generator and fake) did not move; the LoRAs did.
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    gen = result.generator
    assert gen.is_gradient_checkpointing
    lora_b = [p for n, p in gen.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.dtype == torch.float32 for p in lora_b)
    assert any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero
    assert not any(p.requires_grad for n, p in gen.named_parameters() if "lora_" not in n)
    if arch == "tiny-flux":  # the final output layer is not adapted; single blocks' proj_out are
        assert not hasattr(gen.proj_out, "lora_A") and hasattr(gen.single_transformer_blocks[0].proj_out, "lora_A")
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())  # the resolved config
    assert saved["losses"]["feature_block"] == ARCHS[arch].feature_block

    # Exports: the LoRA (diffusers + ComfyUI layouts) and the merged model.
    lora = load_file(str(result.lora_dir / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("transformer.") for k in lora)
    assert (result.lora_dir / "student_comfyui.safetensors").exists() and (result.lora_dir / "schedule.yaml").exists()
    merged = load_file(str(tmp_path / "a" / "student" / "diffusion_pytorch_model.safetensors"))
    assert set(merged) == set(before)
    assert any(not torch.equal(merged[k], before[k]) for k in merged)
    # Checkpoints hold only the trainable tensors (the base is the teacher's).
    ckpt = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000003" / "generator.safetensors"))
    assert ckpt and all("lora_" in k for k in ckpt)
    fake = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000003" / "fake.safetensors"))
    assert all("lora_" in k or k.startswith("head.") for k in fake)
    assert any(v.abs().sum() > 0 for k, v in fake.items() if "lora_B" in k)  # the fake LoRA trained too

    # Resume: 2 steps, then on to 3, equals the uninterrupted run.
    train_distill(config(tmp_path, "b", arch, embeddings, steps=2), teacher=tiny_teacher(arch), vae=tiny_vae())
    b = train_distill(config(tmp_path, "b", arch, embeddings), resume=True, teacher=tiny_teacher(arch), vae=tiny_vae())
    lora_b_run = load_file(str(b.lora_dir / "pytorch_lora_weights.safetensors"))
    for k in lora:
        torch.testing.assert_close(lora[k], lora_b_run[k], rtol=0, atol=0)


def test_cli_run_from_a_pipeline_folder(tmp_path, embeddings):
    """`swd distill` loads the teacher from <pipeline>/transformer and the VAE from <pipeline>/vae."""
    from swd.cli import main

    tiny_teacher("tiny-sd3").save_pretrained(tmp_path / "pipe" / "transformer")
    tiny_vae().save_pretrained(tmp_path / "pipe" / "vae")
    ScaleSchedule(**SCHED, name="tiny").save(tmp_path / "sched.yaml")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "teacher": str(tmp_path / "pipe"), "schedule": str(tmp_path / "sched.yaml"),
        "objective": "mmd-only", "model": {"arch": "tiny-sd3"}, "data": {"name": "embeddings", "path": str(embeddings)},
        "generator": {"lora_rank": 4}, "train": {"steps": 1, "batch_size": 2, "device": "cpu", "precision": "fp32"}}))
    assert main(["distill", "--config", str(tmp_path / "run.yaml")]) == 0
    assert (tmp_path / "run" / "student-lora" / "pytorch_lora_weights.safetensors").exists()
    assert main(["distill", "--config", str(tmp_path / "run.yaml"), "--set", "run_dir=" + str(tmp_path / "r2"),
                 "--set", "data.name=emoji"]) == 2  # a one-line SwdError


def test_mismatched_embeddings_and_arch_are_one_line_errors(tmp_path, embeddings):
    from swd.errors import SwdError

    with pytest.raises(SwdError, match="model.arch: tiny-flux needs a FluxTransformer2DModel teacher"):
        train_distill(config(tmp_path, "x", "tiny-flux", embeddings), teacher=tiny_teacher("tiny-sd3"), vae=tiny_vae())
    cfg = config(tmp_path, "y", "tiny-sd3", embeddings)
    cfg.schedule = ""
    with pytest.raises(SwdError, match="no default schedule"):
        train_distill(cfg, teacher=tiny_teacher("tiny-sd3"), vae=tiny_vae())
    with pytest.raises(SwdError, match="model.vae"):
        train_distill(config(tmp_path, "z", "tiny-sd3", embeddings), teacher=tiny_teacher("tiny-sd3"))
    assert load_prompt_embeddings(embeddings).joint_dim == 16


def test_feature_block_and_cfg_default_by_depth():
    cfg = DistillConfig()
    assert resolve_config(cfg, num_blocks=8).losses.feature_block == 4  # testbed: the middle block
    for arch, block, guidance in (("sd35-large", 20, 4.5), ("sd35-medium", 11, 7.0)):
        cfg.model.arch = arch
        resolved = resolve_config(cfg)
        assert (resolved.losses.feature_block, resolved.losses.teacher_cfg) == (block, guidance)
    cfg.losses.feature_block = 3
    assert resolve_config(cfg).losses.feature_block == 3


def test_dry_run_counts_sd35_medium_on_the_meta_device(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text("model: {arch: sd35-medium}\ngenerator: {lora_rank: 64}\nfake: {lora_rank: 64}\n"
                    "train: {batch_size: 8, gradient_checkpointing: true}\n")
    assert _cmd_distill(argparse.Namespace(config=str(path), set=[], dry_run=True, resume=False)) == 0
    out = capsys.readouterr().out
    teacher = float(re.search(r"teacher transformer\s+([\d.]+) B", out).group(1))
    assert 2.2 < teacher < 2.3
    total = float(re.search(r"total \(estimate\)\s+([\d.]+) GiB", out).group(1))
    assert total > 0
    assert "feature block 11 of 24" in out and "feature_block: 11" in out
    lora = float(re.search(r"generator trainable\s+([\d.]+) M", out).group(1))
    assert 50 < lora < 150  # rank 64 on q/k/v/out (both streams, attn2) and both feed-forward linears
