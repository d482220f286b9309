"""Checkpoint faults: a diverged run writes no poisoned checkpoint, a torn one is skipped on
resume, stale temporary folders are cleaned, and resumed optimizers take the current config."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from swd.config import from_dict
from swd.errors import SwdError
from swd.train.checkpoint import (
    clean_stale_tmp,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    trim_log,
    verify_checkpoint,
)
from swd.train.distill import train_distill
from swd.train.teacher import TeacherConfig, train_teacher
from tests.train.test_teacher import synthetic_data


def teacher_config(run_dir, steps, **train):
    return from_dict(TeacherConfig, {
        "run_dir": str(run_dir),
        "model": {"sample_size": 16, "patch_size": 2, "width": 32, "head_dim": 16, "depth": 2},
        "train": {"steps": steps, "batch_size": 2, "scales": [8, 16], "device": "cpu", "precision": "fp32",
                  "log_every": 1, "sample_every": 1000, "checkpoint_every": 1, "keep_checkpoints": 3,
                  "warmup_steps": 1, **train},
        "sample": {"steps": 1, "num_prompts": 1},
    })


def all_finite(ckpt) -> bool:
    tensors = [t for f in ckpt.glob("*.safetensors") for t in load_file(str(f)).values()]
    opt = torch.load(ckpt / "optimizers.pt", weights_only=True)
    tensors += [v for state in opt["opt"]["state"].values() for v in state.values() if torch.is_tensor(v)]
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_diverged_teacher_keeps_the_last_good_checkpoint(tmp_path):
    """Two good steps, then a resume at lr=inf: step 3's weights are NaN, so nothing is written
    for it; the checkpoints left are all finite and a sane resume continues from step 2."""
    data = synthetic_data(n=4)
    run = tmp_path / "run"
    train_teacher(teacher_config(run, 2), data=data)
    with pytest.raises(SwdError, match=r"training diverged: .* at step 3; .*kept in .*step_00000002"):
        train_teacher(teacher_config(run, 4, lr=float("inf")), resume=True, data=data)
    found = list_checkpoints(run / "checkpoints")
    assert [p.name for p in found] == ["step_00000001", "step_00000002"]
    assert all(all_finite(p) for p in found)
    assert latest_checkpoint(run / "checkpoints").name == "step_00000002"
    train_teacher(teacher_config(run, 3), resume=True, data=data)  # resumes from the intact step 2
    assert all_finite(latest_checkpoint(run / "checkpoints"))


def test_diverged_first_step_leaves_nothing_to_resume(tmp_path):
    data = synthetic_data(n=4)
    run = tmp_path / "run"
    with pytest.raises(SwdError, match="no checkpoint was written before it"):
        train_teacher(teacher_config(run, 4, lr=float("inf")), data=data)
    assert list_checkpoints(run / "checkpoints") == []
    with pytest.raises(SwdError, match="no checkpoint"):
        train_teacher(teacher_config(run, 4), resume=True, data=data)


def test_diverged_distill_writes_no_checkpoint(tmp_path):
    from tests.train.test_distill import config, tiny_teacher

    cfg = config(tmp_path, "d", "mmd-only", steps=3, checkpoint_every=1)
    cfg.generator.lr = float("inf")
    with pytest.raises(SwdError, match="training diverged"):
        train_distill(cfg, data=synthetic_data(), teacher=tiny_teacher())
    for ckpt in list_checkpoints(tmp_path / "d" / "checkpoints"):
        assert all(torch.isfinite(t).all() for f in ckpt.glob("*.safetensors") for t in load_file(str(f)).values())


def test_torn_newest_checkpoint_falls_back_and_resumes_exactly(tmp_path, capsys):
    """step_4's model file is cut short: resume skips it, says so, continues from step_2, and ends
    with the same weights as an uninterrupted run."""
    data = synthetic_data(n=4)
    train_teacher(teacher_config(tmp_path / "a", 6, checkpoint_every=2), data=data)
    run = tmp_path / "b"
    train_teacher(teacher_config(run, 4, checkpoint_every=2), data=data)
    torn = run / "checkpoints" / "step_00000004" / "model.safetensors"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    capsys.readouterr()
    assert latest_checkpoint(run / "checkpoints").name == "step_00000002"
    err = capsys.readouterr().err
    assert "skipping checkpoint step_00000004: model.safetensors is" in err and "step_00000002" in err
    train_teacher(teacher_config(run, 6, checkpoint_every=2), resume=True, data=data)
    a = load_file(str(tmp_path / "a" / "teacher" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(run / "teacher" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tiny_module_and_opt(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0, width=4):
    torch.manual_seed(0)
    module = torch.nn.Linear(width, width)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    module(torch.randn(2, width)).sum().backward()
    opt.step()
    return module, opt


def test_meta_records_sizes_and_hashes_and_catches_a_flipped_byte(tmp_path):
    module, opt = tiny_module_and_opt()
    ckpt = save_checkpoint(tmp_path, 1, {"m": module}, {"o": opt}, {"note": "x"})
    meta = json.loads((ckpt / "meta.json").read_text())
    assert set(meta["files"]) == {"m.safetensors", "optimizers.pt", "rng.pt"}
    assert all(r["bytes"] == (ckpt / n).stat().st_size and len(r["sha256"]) == 64 for n, r in meta["files"].items())
    assert verify_checkpoint(ckpt) is None
    f = ckpt / "m.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(raw))
    assert "sha256" in verify_checkpoint(ckpt)
    with pytest.raises(SwdError, match="no intact checkpoint"):
        latest_checkpoint(tmp_path)


def test_non_finite_optimizer_state_is_not_written(tmp_path):
    module, opt = tiny_module_and_opt()
    next(iter(opt.state.values()))["exp_avg_sq"][0] = float("inf")
    with pytest.raises(SwdError, match=r"optimizer\.o\.state.*exp_avg_sq.* at step 7"):
        save_checkpoint(tmp_path, 7, {"m": module}, {"o": opt}, {})
    assert list(tmp_path.iterdir()) == []


def test_resume_applies_the_current_hyper_parameters(tmp_path):
    module, opt = tiny_module_and_opt(lr=1e-3)
    ckpt = save_checkpoint(tmp_path, 1, {"m": module}, {"o": opt}, {})
    saved_moment = next(iter(opt.state.values()))["exp_avg"].clone()
    fresh_module, fresh_opt = tiny_module_and_opt(lr=0.25, betas=(0.5, 0.9), weight_decay=0.1)
    load_checkpoint(ckpt, {"m": fresh_module}, {"o": fresh_opt})
    group = fresh_opt.param_groups[0]
    assert group["lr"] == 0.25 and tuple(group["betas"]) == (0.5, 0.9) and group["weight_decay"] == 0.1
    assert torch.equal(next(iter(fresh_opt.state.values()))["exp_avg"], saved_moment)  # moments kept


def test_resume_with_another_model_is_one_line(tmp_path):
    module, opt = tiny_module_and_opt(width=4)
    ckpt = save_checkpoint(tmp_path, 1, {"m": module}, {"o": opt}, {})
    other, other_opt = tiny_module_and_opt(width=6)
    with pytest.raises(SwdError, match=r"m\.safetensors does not fit the model \(size mismatch for weight"):
        load_checkpoint(ckpt, {"m": other}, {"o": other_opt})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_tmp_folders_are_cleaned_and_live_ones_kept(tmp_path):
    import os

    module, opt = tiny_module_and_opt()
    save_checkpoint(tmp_path, 5, {"m": module}, {"o": opt}, {})
    live = os.getppid()  # a running process that is not us
    stale_dead = tmp_path / f".tmp-step_00000009-{dead_pid()}"
    stale_behind = tmp_path / f".tmp-step_00000003-{live}"  # behind the newest checkpoint
    writing = tmp_path / f".tmp-step_00000006-{live}"  # ahead of it, writer alive: keep
    for d in (stale_dead, stale_behind, writing):
        d.mkdir()
    removed = clean_stale_tmp(tmp_path)
    assert sorted(removed) == sorted([stale_dead, stale_behind])
    assert writing.is_dir() and not stale_dead.exists() and not stale_behind.exists()
    shutil.rmtree(writing)


def test_trim_log_drops_steps_past_the_checkpoint_and_a_torn_line(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "eval": {"fd": 3.0}}, {"step": 2, "loss": 0.9},
             {"step": 3, "loss": 0.8}, {"step": 4, "loss": 0.7}]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')
    assert trim_log(log, 2) == 3
    assert [json.loads(l) for l in log.read_text().splitlines()] == lines[:3]
    assert trim_log(log, 2) == 0 and trim_log(tmp_path / "none.jsonl", 2) == 0


def test_export_and_resume_report_a_bad_checkpoint_alike(tmp_path, capsys):
    """export and --resume load weights through one loader: a checkpoint of another model, and a
    torn weight file that no sha256 record catches, are the same one-line error either way."""
    from swd.cli import main

    def export_error(run) -> str:
        capsys.readouterr()  # drop the training runs' progress output
        assert main(["export", "--checkpoint", str(run), "--weights", "model", "--out", str(tmp_path / "out")]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    def resume_error(cfg) -> str:
        with pytest.raises(SwdError) as err:
            train_teacher(cfg, resume=True, data=synthetic_data())
        return f"swd: error: {err.value}"

    train_teacher(teacher_config(tmp_path / "run", 2, checkpoint_every=2), data=synthetic_data())
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    # Another model: resume builds it from the config, export from the checkpoint's meta.json.
    wide = teacher_config(tmp_path / "wide", 4)
    wide.model.width, wide.model.head_dim = 64, 32
    shutil.copytree(tmp_path / "run", tmp_path / "wide")
    meta_file = tmp_path / "wide" / "checkpoints" / ckpt.name / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["model"].update(width=64, head_dim=32)
    meta_file.write_text(json.dumps(meta))
    mismatch = resume_error(wide)
    assert "step_00000002/model.safetensors does not fit the model (size mismatch for" in mismatch
    assert export_error(tmp_path / "wide") == mismatch
    # A torn model file in a checkpoint without file records (as written before they existed).
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["files"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    torn = resume_error(teacher_config(tmp_path / "run", 4))
    assert "model.safetensors is unreadable" in torn
    assert export_error(ckpt) == torn
