"""Teacher pretraining on the testbed: rectified flow on a small pixel-space MMDiT or UNet.

The loop reads top to bottom: pick this step's scale, draw a batch, noise it, regress the
velocity, clip, step, update the EMA, then log, sample and checkpoint at their intervals. The
teacher is trained at every scale the testbed schedules use (32 to 64 px by default), because a
scale-wise student's low-resolution steps are distilled from the teacher at those sizes.
`model.arch` picks the network (swd.models.testbed.TESTBED_ARCHS); the loop talks to it only
through its adapter, so it never branches on the architecture.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from swd.config import dump_config, to_dict
from swd.errors import SwdError
from swd.images import save_grid
from swd.models import adapter_for
from swd.models.testbed import MMDiTConfig, UNetConfig, build_testbed_model, resolve_model_config
from swd.sampling import TeacherSampler, add_noise, make_generator, sample
from swd.train.checkpoint import fit_error, latest_checkpoint, load_checkpoint, save_checkpoint, trim_log
from swd.train.common import (
    CaptionedData,
    autocast_context,
    cooldown_factor,
    ema_update,
    load_testbed_data,
    pick_device,
    resize_area,
)
from swd.train.validation import load_model_folder


@dataclass
class TeacherTrainConfig:
    steps: int = 20000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    warmup_steps: int = 200
    # Optional cool-down: from step decay_start the lr falls linearly to zero over decay_steps.
    decay_start: int = 0
    decay_steps: int = 0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # probability of the empty prompt, for classifier-free guidance
    scales: list[int] = field(default_factory=lambda: [32, 40, 48, 64])  # pixel sides trained on
    logit_normal_mean: float = 0.0  # sigma = sigmoid(N(mean, std)): SD3's timestep density
    logit_normal_std: float = 1.0
    precision: str = "bf16"  # autocast dtype on CUDA; CPU runs in fp32
    device: str = "auto"
    seed: int = 0
    log_every: int = 50
    sample_every: int = 2000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time; 0 = no limit
    # torch.compile the model (one static graph per scale, forward and backward); the first step
    # at each scale compiles (minutes on a CPU). Measured in docs/RESULTS.md, "Training throughput".
    compile: bool = False


@dataclass
class TeacherSampleConfig:
    steps: int = 28
    guidance: float = 4.5
    num_prompts: int = 16  # held-out prompts in the periodic grids


@dataclass
class TeacherDataConfig:
    name: str = "emoji"  # emoji | shapes
    path: str = ""  # dataset file; empty = the default cache location
    text_tokens: int = 16


@dataclass
class TeacherConfig:
    run_dir: str = "runs/teacher"
    # A teacher folder (an export of an earlier run) to continue from: its weights start both the
    # model and the EMA; the optimizer starts fresh with the warm-up. Ignored on --resume.
    init: str = ""
    data: TeacherDataConfig = field(default_factory=TeacherDataConfig)
    # MMDiTConfig | UNetConfig, chosen by `model.arch` (absent: mmdit); resolved in __post_init__
    # because the YAML loader cannot pick a dataclass by a key's value.
    model: Any = field(default_factory=MMDiTConfig)
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    sample: TeacherSampleConfig = field(default_factory=TeacherSampleConfig)

    def __post_init__(self):
        self.model: MMDiTConfig | UNetConfig = resolve_model_config(self.model)


def sample_logit_normal(batch: int, mean: float, std: float, device) -> torch.Tensor:
    """Noise levels sigma = sigmoid(u), u ~ N(mean, std): denser in the middle of (0, 1)."""
    return torch.sigmoid(torch.randn(batch, device=device) * std + mean)


def lr_at(step: int, cfg: TeacherTrainConfig) -> float:
    """Linear warm-up, constant, then an optional linear cool-down to zero."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.lr * warm * cooldown_factor(step, cfg.decay_start, cfg.decay_steps)


def teacher_samples(adapter, data: CaptionedData, cfg: TeacherConfig, device, seed: int = 0) -> torch.Tensor:
    """Held-out prompts sampled with the teacher's 28-step Euler + CFG, at full size."""
    n = min(cfg.sample.num_prompts, len(data.heldout_captions))
    cond = data.heldout_condition(n).to(device)
    uncond = data.empty_condition().to(device)
    size = (cfg.model.sample_size, cfg.model.sample_size)
    spec = TeacherSampler(steps=cfg.sample.steps, guidance=cfg.sample.guidance)
    with torch.no_grad(), autocast_context(device, cfg.train.precision):
        x = sample(adapter, spec, cond, uncond, make_generator(seed), device, size=size)
    return x.float().clamp(-1, 1)


def warm_start(model: torch.nn.Module, folder: str) -> None:
    """Copy the weights of a saved teacher folder into `model`; they must fit its config exactly."""
    saved, _ = load_model_folder(folder, "init", what="teacher folder")
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as err:
        raise SwdError(f"init: {folder} does not fit model ({fit_error(err)}); "
                       f"its config.json must match the config's model section") from None


def train_teacher(cfg: TeacherConfig, resume: bool = False, data: CaptionedData | None = None) -> Path:
    """Train (or resume) a teacher; returns the exported EMA model folder. `data` overrides loading."""
    run = Path(cfg.run_dir)
    tc = cfg.train
    torch.manual_seed(tc.seed)  # before the build: the initial weights are part of the run
    model = build_testbed_model(cfg.model)
    multiple = adapter_for(model).patch_size  # UNet: its total downsampling factor
    if any(s % multiple or s > cfg.model.sample_size for s in tc.scales):
        raise SwdError(f"train.scales: each must be a multiple of the model's patch size {multiple} "
                       f"and at most {cfg.model.sample_size}, got {tc.scales}")
    if tc.decay_steps < 0 or tc.decay_start < 0:
        raise SwdError(f"train.decay_start and train.decay_steps must be >= 0, got {tc.decay_start}, {tc.decay_steps}")
    ckpt_dir = run / "checkpoints"
    if not resume and latest_checkpoint(ckpt_dir) is not None:
        raise SwdError(f"run_dir: {run} already has checkpoints; pass --resume or choose another run_dir")
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    device = pick_device(tc.device)

    if data is None:
        data = load_testbed_data(cfg.data.name, cfg.data.path or None, cfg.data.text_tokens)
    images = data.train_images  # (N, 3, S, S) in [-1, 1], on the CPU
    print(f"data: {len(images)} training images, {len(data.heldout_captions)} held-out prompts; device {device}")

    if cfg.init and not resume:
        warm_start(model, cfg.init)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    adapter, ema_adapter = adapter_for(model), adapter_for(ema)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    if tc.compile:  # in place: the parameters, state dict and EMA copy (made above) are untouched
        model.compile(dynamic=False)

    step = 0
    if resume:
        last = latest_checkpoint(ckpt_dir)
        if last is None:
            raise SwdError(f"--resume: no checkpoint in {ckpt_dir}")
        step = load_checkpoint(last, {"model": model, "ema": ema}, {"opt": opt})["step"]
        trim_log(run / "log.jsonl", step)  # steps logged after that checkpoint are repeated now
        print(f"resumed from {last.name}")

    log = open(run / "log.jsonl", "a")
    started = time.time()
    pbar = tqdm(total=tc.steps, initial=step, desc="teacher", dynamic_ncols=True)
    while step < tc.steps:
        # Round-robin over scales: every size gets the same share of updates.
        size = tc.scales[step % len(tc.scales)]
        idx = torch.randint(len(images), (tc.batch_size,))
        x0 = resize_area(images[idx], size).to(device)
        cond = data.train_condition(idx, drop_prob=tc.caption_dropout).to(device)
        sigma = sample_logit_normal(tc.batch_size, tc.logit_normal_mean, tc.logit_normal_std, device)
        eps = torch.randn_like(x0)
        x = add_noise(x0, sigma, eps)

        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        with autocast_context(device, tc.precision):
            v = adapter(x, sigma, cond)
        loss = F.mse_loss(v.float(), eps - x0)  # rectified-flow velocity target
        if not torch.isfinite(loss):
            raise SwdError(f"training diverged: loss is {loss.item()} at step {step + 1}; "
                           f"the last good checkpoint is kept in {ckpt_dir}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        # EMA warm-up: early on, average over the steps taken so far rather than the random init
        # (a warm start's EMA is already a trained model: full decay from the first step).
        ema_update(ema, model, tc.ema_decay if cfg.init else min(tc.ema_decay, (1 + step) / (10 + step)))
        step += 1
        pbar.update(1)

        if step % tc.log_every == 0 or step == tc.steps:
            record = {"step": step, "loss": loss.item(), "grad_norm": float(grad_norm), "scale": size,
                      "lr": lr_at(step - 1, tc), "minutes": (time.time() - started) / 60}
            log.write(json.dumps(record) + "\n")
            log.flush()
            pbar.set_postfix(loss=f"{record['loss']:.4f}", scale=size)
        out_of_time = tc.max_minutes > 0 and (time.time() - started) / 60 >= tc.max_minutes
        if step % tc.sample_every == 0 or step == tc.steps or out_of_time:
            samples = teacher_samples(ema_adapter, data, cfg, device)
            save_grid(samples, run / "samples" / f"step_{step:08d}.png",
                      labels=data.heldout_captions[: len(samples)])
        if step % tc.checkpoint_every == 0 or step == tc.steps or out_of_time:
            save_checkpoint(ckpt_dir, step, {"model": model, "ema": ema}, {"opt": opt},
                            {"config": to_dict(cfg)},
                            keep=tc.keep_checkpoints)
        if out_of_time:
            print(f"stopping at step {step}: train.max_minutes={tc.max_minutes} reached (resume with --resume)")
            break
    pbar.close()
    log.close()
    export = run / "teacher"
    ema.save_pretrained(export, max_shard_size="15MB", safe_serialization=True)
    print(f"EMA teacher written to {export}")
    return export
