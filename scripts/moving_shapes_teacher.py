"""Train and score a small pixel-space video teacher on the moving-shapes testbed (CPU).

    python scripts/moving_shapes_teacher.py train --out runs/ms-teacher --minutes 40
    python scripts/moving_shapes_teacher.py distill --teacher runs/ms-teacher/teacher --out runs/ms-student --minutes 15
    python scripts/moving_shapes_teacher.py score --model runs/ms-teacher/teacher --student runs/ms-student/student --n 64
    python scripts/moving_shapes_teacher.py check-scorer --n 500

The teacher is a diffusers WanTransformer3DModel in pixel space (3 channels, patch 1x4x4, width
128, 6 blocks) conditioned on MiniLM caption states (384 wide), trained by rectified flow
(v = eps - x0, logit-normal sigma, 10% empty captions, EMA) on single-object clips at the four
sizes of the `moving-shapes-4` schedule (the full 9x32x32 half the time). `score` samples held-out
captions (seeds the training never drew) with the teacher (Euler, 28 steps, CFG) and with the
same teacher in the schedule's 4 scale-wise steps undistilled, scores both with the exact
scorer, and writes frame strips and GIFs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from swd.data.moving_shapes import generate_clips, render_clips
from swd.data.text import encode_captions
from swd.data.video_scoring import score_clips
from swd.models import TextCondition
from swd.models.configs import ARCHS
from swd.models.wan import WanAdapter
from swd.runtime import ema_update, resize_clip
from swd.sampling import add_noise, conditioned, guided, make_generator, sample_euler, sample_scalewise, randn
from swd.schedules import flow_sigmas, get_preset

TEXT_TOKENS = 16
ARCH = "moving-shapes-wan"  # swd.models.configs: the teacher's config, its schedule and feature block
TEACHER_CONFIG = ARCHS[ARCH].transformer
TRAIN_SEED, HELDOUT_SEED = 0, 1000  # clips of seed 1000 are never drawn in training


def clips_tensor(samples) -> torch.Tensor:
    return torch.from_numpy(render_clips(samples)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (N, 3, F, H, W)


def condition(captions, cache) -> TextCondition:
    e = encode_captions(captions, max_length=TEXT_TOKENS, cache_dir=cache)
    return TextCondition(e.states, e.pooled)


def train(args) -> None:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = WanTransformer3DModel(**TEACHER_CONFIG)
    ema = WanTransformer3DModel(**TEACHER_CONFIG)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    adapter = WanAdapter(model)
    sizes = get_preset("moving-shapes-4").scales
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    # A pool of training clips, re-rendered as it is used up (cheap: ~4 ms a clip).
    pool_n = 4096
    samples = generate_clips(pool_n, seed=TRAIN_SEED, max_objects=1)
    pool = clips_tensor(samples)
    cond_all = condition([s.caption for s in samples] + [""], args.cache)
    empty = TextCondition(cond_all.prompt_embeds[-1:], cond_all.pooled[-1:])
    gen = torch.Generator().manual_seed(1)
    log = open(out / "log.jsonl", "a")
    started, step, seen = time.time(), 0, 0
    print(f"teacher: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params", flush=True)
    while time.time() - started < args.minutes * 60:
        idx = torch.randint(pool_n, (args.batch,), generator=gen)
        size = sizes[-1] if torch.rand(1, generator=gen) < 0.5 else sizes[int(torch.randint(3, (1,), generator=gen))]
        x0 = resize_clip(pool[idx], size)
        states = cond_all.prompt_embeds[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < 0.1
        states[drop] = empty.prompt_embeds
        cond = TextCondition(states, torch.zeros(args.batch, 0))
        sigma = torch.sigmoid(torch.randn(args.batch, generator=gen))  # logit-normal
        eps = torch.randn(x0.shape, generator=gen)
        x = add_noise(x0, sigma, eps)
        loss = ((adapter(x, sigma, cond) - (eps - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, args.ema if step > 100 else 0.0)
        step += 1
        seen += args.batch
        if step % 25 == 0:
            record = {"step": step, "clips": seen, "loss": loss.item(), "minutes": (time.time() - started) / 60}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(record, flush=True)
        if step % 500 == 0:
            ema.save_pretrained(out / "teacher", safe_serialization=True)
    ema.save_pretrained(out / "teacher", safe_serialization=True)
    summary = {"steps": step, "clips": seen, "minutes": (time.time() - started) / 60, "batch": args.batch,
               "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary, flush=True)


@torch.no_grad()
def score(args) -> None:
    from diffusers import WanTransformer3DModel

    from swd.video import save_video

    model = WanTransformer3DModel.from_pretrained(args.model, use_safetensors=True).eval()
    adapter = WanAdapter(model)
    samples = generate_clips(args.n, seed=HELDOUT_SEED, max_objects=1)
    cond = condition([s.caption for s in samples], args.cache)
    cond = TextCondition(cond.prompt_embeds, torch.zeros(args.n, 0))
    uncond = condition([""], args.cache)
    uncond = TextCondition(uncond.prompt_embeds, torch.zeros(1, 0))
    schedule = get_preset("moving-shapes-4")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    began = time.time()
    noise = randn((args.n, 3, *schedule.final_size), make_generator(0))
    teacher = sample_euler(guided(adapter, cond, uncond, args.cfg), flow_sigmas(args.steps, 3.0), noise)
    runs["teacher"] = (teacher, time.time() - began)
    if args.student:
        student = WanAdapter(WanTransformer3DModel.from_pretrained(args.student, use_safetensors=True).eval())
        began = time.time()
        x = sample_scalewise(conditioned(student, cond), schedule, args.n, 3, generator=make_generator(0),
                             time_mode="uniform")  # students run without CFG
        runs["swd-student-4-scalewise"] = (x, time.time() - began)
    for name, sched in (("undistilled-4-scalewise", schedule), ("undistilled-4-full", schedule.at_full_resolution())):
        began = time.time()
        x = sample_scalewise(guided(adapter, cond, uncond, args.cfg), sched, args.n, 3, generator=make_generator(0),
                             time_mode="uniform")
        runs[name] = (x, time.time() - began)
    def channels_last(x):  # (N, 3, F, H, W) -> (N, F, H, W, 3), the scorer's layout
        return x.clamp(-1, 1).permute(0, 2, 3, 4, 1)

    real = clips_tensor(samples)
    results = {"real": score_clips(channels_last(real), samples, value_range=(-1, 1)).to_dict()}
    for name, (x, seconds) in runs.items():
        report = score_clips(channels_last(x), samples, value_range=(-1, 1))
        results[name] = {**report.to_dict(), "seconds": round(seconds, 1)}
        frames = ((x[:4].clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).numpy()  # (4, F, H, W, 3)
        strip = np.concatenate([np.concatenate(list(f), axis=1) for f in frames], axis=0)
        from PIL import Image

        Image.fromarray((strip * 255).round().astype(np.uint8)).resize(
            (strip.shape[1] * 2, strip.shape[0] * 2), Image.Resampling.NEAREST).save(out / f"{name}.png")
        save_video(np.concatenate(list(frames), axis=2), out / f"{name}.gif", fps=6)
    results["captions"] = [s.caption for s in samples[:4]]
    from swd.eval.flops import sampling_flops

    flops = sampling_flops(ARCH, schedule, teacher_steps=args.steps, cfg=True)
    # Transformer FLOPs per clip: CFG doubles the undistilled runs; the student runs without it.
    results["gflops_per_clip"] = {"teacher": flops.teacher.flops / 1e9, "undistilled-4-scalewise": 2 * flops.swd.flops / 1e9,
                                  "undistilled-4-full": 2 * flops.full.flops / 1e9, "swd-student-4-scalewise": flops.swd.flops / 1e9}
    (out / "scores.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def clip_data(n: int, cache) -> "CaptionedData":
    """Single-object training clips (seed TRAIN_SEED) with MiniLM states, in the trainer's data interface."""
    from swd.train.common import CaptionedData

    samples = generate_clips(n, seed=TRAIN_SEED, max_objects=1)
    captions = [s.caption for s in samples]
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    states = condition(unique, cache).prompt_embeds
    empty = condition([""], cache).prompt_embeds
    heldout = generate_clips(8, seed=HELDOUT_SEED, max_objects=1)
    held_states = condition([s.caption for s in heldout], cache).prompt_embeds
    clips = clips_tensor(samples)
    return CaptionedData(
        train_images=clips, train_caption_index=torch.tensor([row[c] for c in captions]), caption_states=states,
        caption_pooled=torch.zeros(len(unique), 0), empty_states=empty, empty_pooled=torch.zeros(1, 0),
        heldout_captions=[s.caption for s in heldout], heldout_states=held_states,
        heldout_pooled=torch.zeros(len(heldout), 0), heldout_images=clips_tensor(heldout), train_captions=captions,
    )


def distill(args) -> None:
    """MMD-only scale-wise distillation of the teacher (full fine-tune) with the project's trainer."""
    from diffusers import WanTransformer3DModel

    from swd.config import from_dict
    from swd.train.distill import DistillConfig, train_distill

    teacher = WanTransformer3DModel.from_pretrained(args.teacher, use_safetensors=True)
    cfg = from_dict(DistillConfig, {
        "run_dir": args.out, "schedule": "moving-shapes-4", "objective": "mmd-only", "model": {"arch": ARCH},
        "generator": {"lora_rank": 0, "lr": args.lr},
        "train": {"steps": 100000, "batch_size": args.batch, "device": "cpu", "precision": "fp32",
                  "max_minutes": args.minutes, "log_every": 10, "sample_every": 100000, "checkpoint_every": 100000},
    })
    result = train_distill(cfg, data=clip_data(2048, args.cache), teacher=teacher)
    print(f"student: {result.export_dir}, {result.step} steps", flush=True)


def check_scorer(args) -> None:
    """The scorer on clean renders and on uniform RGB noise of the same shape."""
    samples = generate_clips(args.n, seed=1)
    clips = render_clips(samples)
    noise = np.random.default_rng(0).integers(0, 256, size=clips.shape, dtype=np.uint8)
    print(json.dumps({"clean": score_clips(clips, samples).to_dict(), "noise": score_clips(noise, samples).to_dict()},
                     indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=40)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--ema", type=float, default=0.995)
    t.add_argument("--cache", default=None)
    s = sub.add_parser("score")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--steps", type=int, default=28)
    s.add_argument("--cfg", type=float, default=4.5)
    s.add_argument("--cache", default=None)
    s.add_argument("--student", default=None)
    d = sub.add_parser("distill")
    d.add_argument("--teacher", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--minutes", type=float, default=15)
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--lr", type=float, default=1e-4)
    d.add_argument("--cache", default=None)
    c = sub.add_parser("check-scorer")
    c.add_argument("--n", type=int, default=500)
    args = p.parse_args()
    {"train": train, "score": score, "distill": distill, "check-scorer": check_scorer}[args.cmd](args)


if __name__ == "__main__":
    main()
