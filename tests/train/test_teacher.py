import json
import math

import pytest
import torch
from safetensors.torch import load_file

from swd.config import from_dict, to_dict
from swd.errors import SwdError
from swd.train.checkpoint import list_checkpoints
from swd.train.common import CaptionedData
from swd.train.teacher import TeacherConfig, train_teacher


def synthetic_data(n=12, size=16, tokens=4, dim=384, seed=0) -> CaptionedData:
    g = torch.Generator().manual_seed(seed)
    caps = [f"caption {i % 4}" for i in range(n)]
    return CaptionedData(
        train_images=torch.rand(n, 3, size, size, generator=g) * 2 - 1,
        train_caption_index=torch.tensor([i % 4 for i in range(n)]),
        caption_states=torch.randn(4, tokens, dim, generator=g),
        caption_pooled=torch.randn(4, dim, generator=g),
        empty_states=torch.zeros(1, tokens, dim),
        empty_pooled=torch.zeros(1, dim),
        heldout_captions=["held a", "held b"],
        heldout_states=torch.randn(2, tokens, dim, generator=g),
        heldout_pooled=torch.randn(2, dim, generator=g),
        heldout_images=torch.zeros(2, 3, size, size),
        train_captions=caps,
    )


def tiny_config(run_dir, steps):
    return from_dict(TeacherConfig, {
        "run_dir": str(run_dir),
        "model": {"sample_size": 16, "patch_size": 2, "width": 32, "head_dim": 16, "depth": 2},
        "train": {"steps": steps, "batch_size": 4, "scales": [8, 12, 16], "device": "cpu", "precision": "fp32",
                  "log_every": 1, "sample_every": 1000, "checkpoint_every": 2, "keep_checkpoints": 2,
                  "warmup_steps": 2},
        "sample": {"steps": 2, "num_prompts": 2},
    })


def test_resume_matches_an_uninterrupted_run(tmp_path):
    data = synthetic_data()
    straight = train_teacher(tiny_config(tmp_path / "a", 6), data=data)
    train_teacher(tiny_config(tmp_path / "b", 4), data=data)
    resumed = train_teacher(tiny_config(tmp_path / "b", 6), resume=True, data=data)
    a = load_file(str(straight / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # the log has one line per step, and the loss is a finite number
    lines = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 7))
    assert all(l["scale"] in (8, 12, 16) for l in lines)
    assert len(list_checkpoints(tmp_path / "a" / "checkpoints")) == 2  # keep_checkpoints


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path):
    data = synthetic_data()
    with pytest.raises(SwdError, match="no checkpoint"):
        train_teacher(tiny_config(tmp_path / "c", 2), resume=True, data=data)
    train_teacher(tiny_config(tmp_path / "c", 2), data=data)
    with pytest.raises(SwdError, match="already has checkpoints"):
        train_teacher(tiny_config(tmp_path / "c", 2), data=data)


def test_learns_a_single_image(tmp_path):
    """Many steps on one image at one scale: the velocity loss must fall well below its start."""
    data = synthetic_data(n=1)
    cfg = tiny_config(tmp_path / "d", 40)
    cfg.train.scales = [8]
    cfg.train.lr = 3e-3
    cfg.train.caption_dropout = 0.0
    train_teacher(cfg, data=data)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "d" / "log.jsonl").read_text().splitlines()]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5


def test_bad_scale_is_rejected(tmp_path):
    cfg = tiny_config(tmp_path / "e", 2)
    cfg.train.scales = [9]
    with pytest.raises(SwdError, match="train.scales"):
        train_teacher(cfg, data=synthetic_data())


def test_export_command_writes_the_chosen_weights(tmp_path, capsys):
    from swd.cli import main
    from swd.train.checkpoint import latest_checkpoint

    train_teacher(tiny_config(tmp_path / "x", 2), data=synthetic_data())
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tmp_path / "x"), "--weights", "model", "--out", str(out)]) == 0
    saved = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    ckpt = load_file(str(latest_checkpoint(tmp_path / "x" / "checkpoints") / "model.safetensors"))
    assert saved.keys() == ckpt.keys() and all(torch.equal(saved[k], ckpt[k]) for k in saved)
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(out)]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err


def tiny_unet_config(run_dir, steps):
    cfg = tiny_config(run_dir, steps)
    return from_dict(TeacherConfig, {
        **to_dict(cfg),
        "model": {"arch": "unet", "sample_size": 16, "block_out_channels": [8, 16],
                  "cross_attention": [False, True], "head_dim": 8, "norm_num_groups": 4},
    })


def test_unet_teacher_trains_resumes_and_exports(tmp_path):
    from diffusers import UNet2DConditionModel

    data = synthetic_data()
    straight = train_teacher(tiny_unet_config(tmp_path / "u", 3), data=data)
    train_teacher(tiny_unet_config(tmp_path / "v", 2), data=data)
    resumed = train_teacher(tiny_unet_config(tmp_path / "v", 3), resume=True, data=data)
    a = load_file(str(straight / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(UNet2DConditionModel.from_pretrained(straight)).__name__ == "UNet2DConditionModel"
    # the saved config reloads as a UNet config, arch included
    meta = json.loads((list_checkpoints(tmp_path / "u" / "checkpoints")[-1] / "meta.json").read_text())
    assert type(from_dict(TeacherConfig, meta["config"]).model).__name__ == "UNetConfig"
    losses = [json.loads(l)["loss"] for l in (tmp_path / "u" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(math.isfinite(l) for l in losses)


def test_unet_scales_must_divide_its_downsampling_factor(tmp_path):
    cfg = tiny_unet_config(tmp_path / "w", 2)
    cfg.train.scales = [9]
    with pytest.raises(SwdError, match="patch size 2"):
        train_teacher(cfg, data=synthetic_data())


def test_configs_without_arch_still_build_the_mmdit():
    cfg = from_dict(TeacherConfig, {"model": {"sample_size": 16, "patch_size": 2}})
    assert type(cfg.model).__name__ == "MMDiTConfig" and "arch" not in to_dict(cfg)["model"]
    with pytest.raises(SwdError, match="model.arch"):
        from_dict(TeacherConfig, {"model": {"arch": "resnet"}})


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    """train.compile: the same weights as eager training to float rounding, the same exported keys.

    Dynamo traces forward and backward for real, with the aot_eager backend (inductor's C++ build
    of two graphs would cost CI minutes; tests/pipelines/test_compile.py covers inductor)."""
    compile_for_real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_for_real(model, **{**kw, "backend": "aot_eager"}))
    data = synthetic_data()
    cfg = tiny_config(tmp_path / "eager", 3)
    cfg.train.scales = [8, 16]
    eager = train_teacher(cfg, data=data)
    cfg.run_dir, cfg.train.compile = str(tmp_path / "compiled"), True
    compiled = train_teacher(cfg, data=data)
    a = load_file(str(eager / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(compiled / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_warm_start_continues_from_an_exported_teacher(tmp_path):
    data = synthetic_data()
    first = train_teacher(tiny_config(tmp_path / "a", 3), data=data)
    # zero further steps: the export is the init's weights, bit for bit (model and EMA both start there)
    cfg = tiny_config(tmp_path / "b", 0)
    cfg.init = str(first)
    again = train_teacher(cfg, data=data)
    a = load_file(str(first / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(again / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # two steps on: the EMA moves at decay 0.999 from the first step, ~(1 - 0.999) x Adam's lr-sized
    # steps (lr 3e-4); the cold-start EMA warm-up (decay 0.1 at step 1) would move it ~1e-4
    cfg = tiny_config(tmp_path / "c", 2)
    cfg.init = str(first)
    moved = load_file(str(train_teacher(cfg, data=data) / "diffusion_pytorch_model.safetensors"))
    drift = max((moved[k] - a[k]).abs().max().item() for k in a)
    assert 0 < drift < 1e-5


def test_warm_start_from_a_misfit_folder_is_one_line(tmp_path):
    data = synthetic_data()
    first = train_teacher(tiny_config(tmp_path / "a", 1), data=data)
    cfg = tiny_config(tmp_path / "b", 1)
    cfg.model.width = 48
    cfg.init = str(first)
    with pytest.raises(SwdError, match="init: .* does not fit model"):
        train_teacher(cfg, data=data)
    cfg.init = str(tmp_path / "nowhere")
    with pytest.raises(SwdError, match="init"):
        train_teacher(cfg, data=data)


def test_cool_down_falls_linearly_to_zero_and_is_logged(tmp_path):
    from swd.train.teacher import TeacherTrainConfig, lr_at
    tc = TeacherTrainConfig(lr=1e-3, warmup_steps=1, decay_start=10, decay_steps=4)
    # by hand: 1e-3 up to step 9, then 1e-3 * (1 - (step - 10) / 4), never below zero
    assert [lr_at(s, tc) for s in (0, 9, 10, 11, 13, 14, 20)] == pytest.approx(
        [1e-3, 1e-3, 1e-3, 7.5e-4, 2.5e-4, 0.0, 0.0])
    cfg = tiny_config(tmp_path / "c", 4)
    cfg.train.decay_start, cfg.train.decay_steps = 1, 2
    train_teacher(cfg, data=synthetic_data())
    logged = [json.loads(line)["lr"] for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    lr = cfg.train.lr  # warm-up over 2 steps, then the cool-down from step 1 over 2 steps
    assert logged == pytest.approx([0.5 * lr, lr, 0.5 * lr, 0.0])


def test_negative_cool_down_is_rejected(tmp_path):
    cfg = tiny_config(tmp_path / "n", 2)
    cfg.train.decay_steps = -1
    with pytest.raises(SwdError, match="decay_steps"):
        train_teacher(cfg, data=synthetic_data())
