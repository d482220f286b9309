"""SwD distillation (SWD_SPEC section 4): a scale-wise few-step generator from a teacher.

One generator step, in order:
  1. Pick the scale index i (round-robin by step, or at random), the same for the whole batch.
  2. Fake-score updates (DMD objectives): on fresh batches at the same scale, regress the fake
     model's x0 prediction onto the generator's detached samples, plus the GAN discriminator.
  3. Generator update: real images are area-downscaled to s_i and s_{i-1}; the lower one is
     upsampled (bicubic) and noised to sigma_i (pure noise at the first scale); the generator
     predicts x0_hat at s_i, and the weighted DMD, MMD and GAN losses pull it to the data.

Objectives (one config key): `swd` = DMD + MMD + GAN; `mmd-only` (no fake model at all);
`dmd-only` = DMD + GAN without MMD; `dmd2-full` = DMD + GAN on the schedule's sigmas at constant
full resolution (the few-step baseline, same code).

All randomness of a step comes from a generator seeded by (seed, process rank, step), so a resumed
run repeats exactly what an uninterrupted one would have done. Gradients are averaged across
processes by hand (accelerate sets up the processes): each model is called through several entry
points per step (velocity, features), which DDP's one-forward contract does not cover.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from swd.config import dump_config, to_dict
from swd.errors import SwdError
from swd.images import save_grid
from swd.losses import GANHead, build_mmd_loss, dmd_loss, fake_score_loss, gan_discriminator_loss, gan_generator_loss
from swd.models import SD3Adapter, TextCondition
from swd.sampling import add_noise, conditioned, guided, make_generator, sample_scalewise, upsample
from swd.schedules import ScaleSchedule, flow_sigmas, resolve_schedule
from swd.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from swd.train.common import CaptionedData, autocast_context, ema_update, load_testbed_data, pick_device, resize_area

OBJECTIVES = ("swd", "mmd-only", "dmd-only", "dmd2-full")
# SWD_SPEC section 4: attention q/k/v/out (both streams of joint attention) and the feed-forward linears.
LORA_TARGETS_SD3 = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


@dataclass
class LossConfig:
    dmd_weight: float = 1.0
    mmd_weight: float = 1.0
    gan_weight: float = 5e-3  # generator's GAN term
    disc_weight: float = 1e-2  # discriminator term in the fake-score update
    teacher_cfg: float = 4.5  # guidance of the teacher inside DMD (empty prompt as unconditional)
    dmd_sigma_idx: tuple[int, int] = (12, 27)  # grid indices DMD draws its noise level from (sigma <= .79)
    mmd_sigma_idx: tuple[int, int] = (18, 27)  # and MMD / GAN (sigma <= .60)
    fake_sigma_idx: tuple[int, int] = (0, 27)  # and the fake-score regression (whole grid)
    mmd_kernel: str = "linear"  # linear | rbf
    mmd_form: str = "pseudo_huber"  # pseudo_huber | mse (linear kernel)
    mmd_per_image: bool = True  # False pools token means over the batch (the worse ablation)
    feature_block: int = 4  # block whose image tokens feed MMD and the GAN head
    feature_source: str = "auto"  # auto (fake model when there is one, else teacher) | teacher | fake


@dataclass
class ModelTrainConfig:
    lora_rank: int = 0  # 0 = full fine-tune (small models); else a peft LoRA on the teacher copy
    lora_alpha: int = 0  # 0 = same as rank
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2


@dataclass
class DistillTrainConfig:
    steps: int = 2000  # generator updates
    batch_size: int = 64
    fake_updates: int = 5  # fake-score updates per generator update
    scale_order: str = "round_robin"  # round_robin | random
    grad_clip: float = 10.0
    precision: str = "bf16"
    device: str = "auto"
    ema_decay: float = 0.0  # 0 = no EMA (the paper's setting)
    gradient_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    max_minutes: float = 0.0  # stop with a checkpoint after this wall time (0 = no limit)


@dataclass
class DistillDataConfig:
    name: str = "emoji"
    path: str = ""
    text_tokens: int = 16


@dataclass
class DistillConfig:
    run_dir: str = "runs/distill"
    teacher: str = ""  # folder of a diffusers SD3Transformer2DModel (the testbed teacher)
    schedule: str = "testbed-4"  # preset name or YAML/JSON file
    objective: str = "swd"
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    generator: ModelTrainConfig = field(default_factory=ModelTrainConfig)
    fake: ModelTrainConfig = field(default_factory=ModelTrainConfig)
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)


def objective_weights(cfg: DistillConfig) -> dict[str, float]:
    """Loss weights the objective switches on (the config's weights, or zero)."""
    lc = cfg.losses
    table = {
        "swd": {"dmd": lc.dmd_weight, "mmd": lc.mmd_weight, "gan": lc.gan_weight},
        "mmd-only": {"dmd": 0.0, "mmd": lc.mmd_weight, "gan": 0.0},
        "dmd-only": {"dmd": lc.dmd_weight, "mmd": 0.0, "gan": lc.gan_weight},
        "dmd2-full": {"dmd": lc.dmd_weight, "mmd": 0.0, "gan": lc.gan_weight},
    }
    if cfg.objective not in table:
        raise SwdError(f"objective: unknown {cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return table[cfg.objective]


def training_schedule(cfg: DistillConfig) -> ScaleSchedule:
    schedule = resolve_schedule(cfg.schedule)
    return schedule.at_full_resolution() if cfg.objective == "dmd2-full" else schedule


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """All randomness of one step, from (seed, rank, step): resumed runs repeat exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + step)


def scale_index(step: int, n_scales: int, order: str, gen: torch.Generator) -> int:
    if order == "round_robin":
        return step % n_scales
    if order == "random":
        return int(torch.randint(n_scales, (1,), generator=gen))
    raise SwdError(f"train.scale_order: must be round_robin or random, got {order!r}")


@dataclass
class ScaleBatch:
    """One batch at scale i: the generator's input, its sigma and the real target at s_i."""

    x_in: torch.Tensor  # (B, C, h_i, w_i)
    sigma: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, C, h_i, w_i): real images area-downscaled to s_i
    cond: TextCondition


def make_scale_batch(images: torch.Tensor, cond: TextCondition, schedule: ScaleSchedule, i: int,
                     gen: torch.Generator, device) -> ScaleBatch:
    """Training pair of SWD_SPEC section 4 step 1-2 for (pixel-space) images in [-1, 1]."""
    size = schedule.scales[i]
    target = F.interpolate(images, size=size, mode="area") if tuple(images.shape[-2:]) != size else images
    sigma_i = schedule.sigmas[i]
    eps = torch.randn(target.shape, generator=gen)
    if i == 0:
        # The first step starts from the sampler's starting point: noise at sigma_0 (pure if 1).
        x_in = add_noise(torch.zeros_like(target), sigma_i, eps) if sigma_i < 1 else eps
    else:
        prev = schedule.scales[i - 1]
        lower = F.interpolate(images, size=prev, mode="area") if tuple(images.shape[-2:]) != prev else images
        x_in = add_noise(upsample(lower, size, "bicubic"), sigma_i, eps)
    b = images.shape[0]
    return ScaleBatch(x_in.to(device), torch.full((b,), sigma_i, device=device), target.to(device), cond.to(device))


def grid_sigmas(grid: torch.Tensor, idx_range, batch: int, gen: torch.Generator, device) -> torch.Tensor:
    lo, hi = idx_range
    idx = torch.randint(lo, hi + 1, (batch,), generator=gen)
    return grid[idx].to(device)


class FakeScore(torch.nn.Module):
    """The fake-score model (a teacher copy, trained on generator samples) and the GAN head."""

    def __init__(self, transformer, head: GANHead):
        super().__init__()
        self.transformer = transformer
        self.head = head
        # Kept out of the module tree: it wraps the same transformer, registered above.
        self.__dict__["adapter"] = SD3Adapter(transformer)


def add_lora(transformer, mc: ModelTrainConfig, name: str):
    """Freeze the model and attach a trainable LoRA (rank > 0), or train every weight (rank 0)."""
    if mc.lora_rank <= 0:
        transformer.requires_grad_(True)
        return transformer
    from peft import LoraConfig

    transformer.requires_grad_(False)
    config = LoraConfig(r=mc.lora_rank, lora_alpha=mc.lora_alpha or mc.lora_rank, init_lora_weights="gaussian",
                        target_modules=LORA_TARGETS_SD3)
    transformer.add_adapter(config, adapter_name=name)
    return transformer


def average_gradients(params, world_size: int) -> None:
    if world_size <= 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size)


def trainable(module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def load_teacher(path: str):
    from diffusers import SD3Transformer2DModel

    if not path or not Path(path).is_dir():
        raise SwdError(f"teacher: {path!r} is not a folder with a saved SD3Transformer2DModel")
    return SD3Transformer2DModel.from_pretrained(path)


def train_distill(cfg: DistillConfig, resume: bool = False, data: Optional[CaptionedData] = None,
                  teacher: Optional[torch.nn.Module] = None) -> "DistillResult":
    """Distill a scale-wise student; returns the exported folder and the trained generator."""
    from accelerate import Accelerator

    tc, lc = cfg.train, cfg.losses
    weights = objective_weights(cfg)
    schedule = training_schedule(cfg)
    run, ckpt_dir = Path(cfg.run_dir), Path(cfg.run_dir) / "checkpoints"
    device_pref = pick_device(tc.device)
    accelerator = Accelerator(cpu=device_pref.type == "cpu")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if not resume and latest_checkpoint(ckpt_dir) is not None:
        raise SwdError(f"run_dir: {run} already has checkpoints; pass --resume or choose another run_dir")
    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(dump_config(cfg))

    if data is None:
        data = load_testbed_data(cfg.data.name, cfg.data.path or None, cfg.data.text_tokens)
    if teacher is None:
        teacher = load_teacher(cfg.teacher)
    teacher = teacher.to(device).eval().requires_grad_(False)
    teacher_adapter = SD3Adapter(teacher)
    schedule.check_model(teacher_adapter.patch_size, teacher_adapter.max_latent_size, "teacher")
    if tuple(data.train_images.shape[-2:]) != schedule.final_size:
        raise SwdError(f"schedule: final size {schedule.final_size} differs from the data's "
                       f"{tuple(data.train_images.shape[-2:])}")
    feature_block = lc.feature_block
    teacher_adapter.block(feature_block)  # validates the index against the model

    generator_model = add_lora(copy.deepcopy(teacher), cfg.generator, "student").train()
    gen_adapter = SD3Adapter(generator_model)
    needs_fake = weights["dmd"] > 0 or weights["gan"] > 0
    fake = None
    if needs_fake:
        width = teacher.config.num_attention_heads * teacher.config.attention_head_dim
        fake = FakeScore(add_lora(copy.deepcopy(teacher), cfg.fake, "fake"), GANHead(width)).to(device).train()
    source = lc.feature_source if lc.feature_source != "auto" else ("fake" if fake is not None else "teacher")
    if source == "fake" and fake is None:
        raise SwdError("losses.feature_source: 'fake' needs a fake-score model (objective mmd-only has none)")
    if source not in ("fake", "teacher"):
        raise SwdError(f"losses.feature_source: must be auto, teacher or fake, got {source!r}")
    if tc.gradient_checkpointing:
        generator_model.enable_gradient_checkpointing()
    mmd = build_mmd_loss(lc.mmd_kernel, **({"form": lc.mmd_form, "per_image": lc.mmd_per_image}
                                            if lc.mmd_kernel == "linear" else {}))
    ema = copy.deepcopy(generator_model).requires_grad_(False) if tc.ema_decay > 0 else None

    def adamw(params, mc: ModelTrainConfig):
        return torch.optim.AdamW(params, lr=mc.lr, betas=tuple(mc.betas), weight_decay=mc.weight_decay)

    gen_params = trainable(generator_model)
    gen_opt = adamw(gen_params, cfg.generator)
    fake_params = trainable(fake) if fake is not None else []
    fake_opt = adamw(fake_params, cfg.fake) if fake is not None else None
    modules = {"generator": generator_model, **({"fake": fake} if fake is not None else {}),
               **({"ema": ema} if ema is not None else {})}
    optimizers = {"generator": gen_opt, **({"fake": fake_opt} if fake_opt is not None else {})}

    step = 0
    if resume:
        last = latest_checkpoint(ckpt_dir)
        if last is None:
            raise SwdError(f"--resume: no checkpoint in {ckpt_dir}")
        step = load_checkpoint(last, modules, optimizers)["step"]
        if main:
            print(f"resumed from {last.name}")

    grid = torch.tensor(flow_sigmas()[:-1])
    uncond = data.empty_condition().to(device)
    images = data.train_images

    def draw(i: int, gen: torch.Generator) -> ScaleBatch:
        idx = torch.randint(len(images), (tc.batch_size,), generator=gen)
        return make_scale_batch(images[idx], data.train_condition(idx), schedule, i, gen, device)

    def student_x0(batch: ScaleBatch) -> torch.Tensor:
        v = gen_adapter(batch.x_in, batch.sigma, batch.cond)
        return batch.x_in - batch.sigma.view(-1, 1, 1, 1) * v.float()

    def features_of(x: torch.Tensor, sigma, cond) -> torch.Tensor:
        model = fake.adapter if source == "fake" else teacher_adapter
        return model.features(x, sigma, cond, feature_block).float()

    if main:
        n_gen = sum(p.numel() for p in gen_params)
        print(f"distill: objective {cfg.objective} {weights}; schedule {schedule.name} {[s[0] for s in schedule.scales]}; "
              f"{n_gen / 1e6:.2f}M trainable generator params; {world} process(es) on {device}")
    log = open(run / "log.jsonl", "a") if main else None
    started = time.time()
    pbar = tqdm(total=tc.steps, initial=step, desc=f"distill {cfg.objective}", disable=not main, dynamic_ncols=True)
    while step < tc.steps:
        gen = step_generator(tc.seed, rank, step)
        i = scale_index(step, schedule.steps, tc.scale_order, gen)
        record = {"step": step + 1, "scale": schedule.scales[i][0]}

        # Fake-score (and discriminator) updates on the generator's current samples.
        if fake is not None:
            fake.requires_grad_(False)
            for p in fake_params:
                p.requires_grad_(True)
            for _ in range(tc.fake_updates):
                batch = draw(i, gen)
                with torch.no_grad(), autocast_context(device, tc.precision):
                    x0_hat = student_x0(batch)
                sigma_f = grid_sigmas(grid, lc.fake_sigma_idx, tc.batch_size, gen, device)
                eps = torch.randn(x0_hat.shape, generator=gen).to(device)
                with autocast_context(device, tc.precision):
                    x_f = add_noise(x0_hat, sigma_f, eps)
                    v_f = fake.adapter(x_f, sigma_f, batch.cond)
                    loss_fake = fake_score_loss(x_f - sigma_f.view(-1, 1, 1, 1) * v_f.float(), x0_hat)
                    loss_disc = torch.zeros((), device=device)
                    if weights["gan"] > 0:
                        sigma_g = grid_sigmas(grid, lc.mmd_sigma_idx, tc.batch_size, gen, device)
                        eps_g = torch.randn(x0_hat.shape, generator=gen).to(device)
                        logits_fake = fake.head(fake.adapter.features(add_noise(x0_hat, sigma_g, eps_g), sigma_g, batch.cond, feature_block).float())
                        logits_real = fake.head(fake.adapter.features(add_noise(batch.target, sigma_g, eps_g), sigma_g, batch.cond, feature_block).float())
                        loss_disc = gan_discriminator_loss(logits_fake, logits_real)
                    loss = loss_fake + lc.disc_weight * loss_disc
                    loss_disc = loss_disc.detach()
                check_finite(loss, "fake-score", step, ckpt_dir)
                fake_opt.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(fake_params, world)
                torch.nn.utils.clip_grad_norm_(fake_params, tc.grad_clip)
                fake_opt.step()
            record.update(fake=loss_fake.item(), disc=loss_disc.item())
            fake.requires_grad_(False)  # frozen while the generator's losses flow through it

        # Generator update.
        batch = draw(i, gen)
        with autocast_context(device, tc.precision):
            x0_hat = student_x0(batch)
            losses = {}
            if weights["dmd"] > 0:
                sigma_d = grid_sigmas(grid, lc.dmd_sigma_idx, tc.batch_size, gen, device)
                eps_d = torch.randn(x0_hat.shape, generator=gen).to(device)
                with torch.no_grad():
                    x_d = add_noise(x0_hat.detach(), sigma_d, eps_d)
                    s = sigma_d.view(-1, 1, 1, 1)
                    x0_real = x_d - s * guided(teacher_adapter, batch.cond, uncond, lc.teacher_cfg)(x_d, sigma_d).float()
                    x0_fake = x_d - s * fake.adapter(x_d, sigma_d, batch.cond).float()
                losses["dmd"] = dmd_loss(x0_hat, x0_real, x0_fake)
            if weights["mmd"] > 0 or weights["gan"] > 0:
                # Real target and sample noised with the SAME eps and level.
                sigma_m = grid_sigmas(grid, lc.mmd_sigma_idx, tc.batch_size, gen, device)
                eps_m = torch.randn(x0_hat.shape, generator=gen).to(device)
                feats_fake = features_of(add_noise(x0_hat, sigma_m, eps_m), sigma_m, batch.cond)
                if weights["mmd"] > 0:
                    with torch.no_grad():
                        feats_real = features_of(add_noise(batch.target, sigma_m, eps_m), sigma_m, batch.cond)
                    losses["mmd"] = mmd(feats_real, feats_fake)
                if weights["gan"] > 0:
                    gan_feats = feats_fake if source == "fake" else fake.adapter.features(
                        add_noise(x0_hat, sigma_m, eps_m), sigma_m, batch.cond, feature_block).float()
                    losses["gan"] = gan_generator_loss(fake.head(gan_feats))
            total = sum(weights[k] * v for k, v in losses.items())
        check_finite(total, "generator", step, ckpt_dir)
        gen_opt.zero_grad(set_to_none=True)
        total.backward()
        average_gradients(gen_params, world)
        grad_norm = torch.nn.utils.clip_grad_norm_(gen_params, tc.grad_clip)
        gen_opt.step()
        if ema is not None:
            ema_update(ema, generator_model, tc.ema_decay)
        step += 1
        pbar.update(1)
        record.update({k: v.item() for k, v in losses.items()}, grad_norm=float(grad_norm),
                      minutes=(time.time() - started) / 60)

        out_of_time = tc.max_minutes > 0 and (time.time() - started) / 60 >= tc.max_minutes
        last_step = step == tc.steps or out_of_time
        if main and (step % tc.log_every == 0 or last_step):
            log.write(json.dumps(record) + "\n")
            log.flush()
            pbar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("dmd", "mmd", "gan", "fake")}, scale=record["scale"])
        if main and (step % tc.sample_every == 0 or last_step):
            grid_imgs = student_samples(gen_adapter, data, schedule, device, tc.precision)
            save_grid(grid_imgs, run / "samples" / f"step_{step:08d}.png", labels=data.heldout_captions[: len(grid_imgs)])
        if main and (step % tc.checkpoint_every == 0 or last_step):
            save_checkpoint(ckpt_dir, step, modules, optimizers, {"config": to_dict(cfg)}, keep=tc.keep_checkpoints)
        if out_of_time:
            if main:
                print(f"stopping at step {step}: train.max_minutes={tc.max_minutes} reached (resume with --resume)")
            break
    pbar.close()
    if log is not None:
        log.close()
    export = run / "student"
    if main:
        export_student(ema if ema is not None else generator_model, export, schedule)
        print(f"student written to {export}")
    accelerator.wait_for_everyone()
    return DistillResult(export, generator_model, step)


@dataclass
class DistillResult:
    export_dir: Path  # written by the main process
    generator: torch.nn.Module  # this process's replica
    step: int


def check_finite(loss: torch.Tensor, what: str, step: int, ckpt_dir: Path) -> None:
    if not torch.isfinite(loss):
        raise SwdError(f"training diverged: the {what} loss is {loss.item()} at step {step + 1}; "
                       f"the last good checkpoint is kept in {ckpt_dir}")


@torch.no_grad()
def student_samples(adapter, data: CaptionedData, schedule: ScaleSchedule, device, precision: str,
                    n: int = 16, seed: int = 0) -> torch.Tensor:
    n = min(n, len(data.heldout_captions))
    cond = data.heldout_condition(n).to(device)
    was_training = adapter.training
    adapter.eval()
    with autocast_context(device, precision):
        x = sample_scalewise(conditioned(adapter, cond), schedule, n, adapter.latent_channels,
                             generator=make_generator(seed), device=device)
    adapter.train(was_training)
    return x.float().clamp(-1, 1)


def export_student(model, folder: Path, schedule: ScaleSchedule) -> None:
    """Save the student as a diffusers model (LoRA merged) plus its schedule, in <=15 MB shards."""
    model = copy.deepcopy(model)
    if getattr(model, "peft_config", None):
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
        model = _strip_lora(model)
    model.save_pretrained(folder, max_shard_size="15MB", safe_serialization=True)
    schedule.save(folder / "schedule.yaml")


def _strip_lora(model):
    """A plain copy of a LoRA-merged diffusers model: base weights renamed back, LoRA keys dropped."""
    state = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    plain = type(model).from_config(model.config)
    plain.load_state_dict(state)
    return plain
