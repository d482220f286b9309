"""SwD distillation (SWD_SPEC section 4): a scale-wise few-step generator from a teacher.

One generator step, in order:
  1. Pick the scale index i (round-robin by step, or at random), the same for the whole batch.
  2. Fake-score updates (DMD objectives): on fresh batches at the same scale, regress the fake
     model's x0 prediction onto the generator's detached samples, plus the GAN discriminator.
  3. Generator update: real images are area-downscaled to s_i and s_{i-1}; the lower one is
     upsampled (bicubic) and noised to sigma_i (pure noise at the first scale); the generator
     predicts x0_hat at s_i, and the weighted DMD, MMD and GAN losses pull it to the data.

Objectives (config key `objective`) are classes of `swd.objectives`: `swd` = DMD + MMD + GAN;
`mmd-only` (no fake model at all); `dmd-only` = DMD + GAN without MMD; `dmd2-full` = DMD + GAN on
the schedule's sigmas at constant full resolution. The loop below only calls their `fake_loss`
and `generator_loss`; it never asks which objective it runs.

Layout: `train_distill` is the loop; `prepare_run` validates, loads, builds and restores
everything it uses (a `DistillRun`); `Reporter` writes logs, grids and evaluations; `export_run`
writes the student.

Models (config `model.arch`): the pixel-space testbed MMDiT, or SD3.5 / FLUX / Wan2.1 video (real or
tiny random configs of `swd.models.configs.ARCHS`) through `swd.models.adapter_for`. Video runs
take clips (B, 3, F, H, W) and (frames, h, w) schedules: pairs are clips downscaled in time and
space in pixel space (`swd.runtime.resize_clip`), encoded by the causal VAE, the lower one grown
by `swd.sampling.upsample_video`. Latent models
see VAE latents of area-downscaled pixel images (`swd.train.latents`) and read prompt embeddings
precomputed once by `swd data encode-prompts` (`swd.data.prompts`). LoRA generator and fake
models share the teacher's frozen weights (one allocation, separate module objects).

All randomness of a step comes from a generator seeded by (seed, process rank, step), so a resumed
run repeats exactly what an uninterrupted one would have done. Gradients are averaged across
processes by hand (accelerate sets up the processes): each model is called through several entry
points per step (velocity, features), which DDP's one-forward contract does not cover.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from swd.config import dump_config, to_dict
from swd.errors import SwdError
from swd.images import save_grid
from swd.lora import lora_config, model_family, save_lora
from swd.losses import GANHead
from swd.models import TextCondition, adapter_for, text_widths
from swd.models.configs import ARCHS, ArchSpec, transformer_class
from swd.objectives import Critics, FakeScore, LossConfig, ObjectiveName, objective_class
from swd.runtime import autocast_context, ema_update, pick_device, resize_area, resize_clip
from swd.processes import FLOW
from swd.sampling import make_generator, sample, upsample, upsample_video
from swd.schedules import ScaleSchedule, resolve_schedule
from swd.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, trim_log
from swd.train.common import check_patterns, cooldown_factor, load_training_data
from swd.train.latents import PixelSpace, VaeSpace, VideoVaeSpace, load_vae, pretrained_folder

ARCH_NAMES = ("testbed", *ARCHS)  # testbed = the pixel-space MMDiT of swd.models.testbed


@dataclass
class ModelTrainConfig:
    lora_rank: int = 0  # 0 = full fine-tune (small models); else a peft LoRA on the teacher copy
    lora_alpha: int = 0  # 0 = same as rank
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    # Optional linear cool-down: from generator step decay_start the lr falls to zero over decay_steps.
    decay_start: int = 0
    decay_steps: int = 0
    # Full fine-tune only: parameters whose names match one of these regular expressions keep the
    # teacher's values; in YAML, single-quoted: frozen: ['\.ff\.', '\.ff_context\.'] (no feed-forwards).
    frozen: list[str] = field(default_factory=list)


@dataclass
class DistillTrainConfig:
    steps: int = 2000  # generator updates
    batch_size: int = 64  # per process (GPU); the global batch is this times the number of processes
    fake_updates: int = 5  # fake-score updates per generator update
    scale_order: str = "round_robin"  # round_robin | random
    grad_clip: float = 10.0
    precision: str = "bf16"
    device: str = "auto"
    ema_decay: float = 0.0  # 0 = no EMA (the paper's setting)
    gradient_checkpointing: bool = False  # recompute block activations in backward (teacher, generator, fake)
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    max_minutes: float = 0.0  # stop with a checkpoint after this wall time (0 = no limit)
    # Testbed only: FD, precision, recall, text alignment (and shapes accuracy) of the student on
    # `eval_n` held-out prompts every `eval_every` steps and at steps 0 and last, into log.jsonl.
    eval_every: int = 0
    eval_n: int = 128
    export_merged: bool = True  # also write the LoRA student merged into a full diffusers model


@dataclass
class DistillDataConfig:
    name: str = "emoji"  # emoji | shapes (testbed, MiniLM text) | embeddings (swd data encode-prompts output)
    path: str = ""  # testbed .npz (default: the cache), or the embeddings file / folder
    text_tokens: int = 16  # testbed only: MiniLM tokens per caption


@dataclass
class DistillModelConfig:
    arch: str = "testbed"  # testbed | sd35-large | sd35-medium | flux-dev | tiny-sd3 | tiny-flux
    vae: str = ""  # AutoencoderKL folder, or a pipeline folder with vae/; empty: the teacher's pipeline folder
    flux_guidance: float = 4.5  # FLUX-dev's embedded guidance, kept by teacher, student and fake


@dataclass
class DistillConfig:
    run_dir: str = "runs/distill"
    teacher: str = ""  # folder of the teacher's diffusers transformer, or a pipeline folder with transformer/
    schedule: str = ""  # preset name or YAML/JSON file; empty: the arch's default (testbed-4, sd35-large-4, ...)
    objective: ObjectiveName = "swd"  # a name of swd.objectives.OBJECTIVES
    model: DistillModelConfig = field(default_factory=DistillModelConfig)
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    generator: ModelTrainConfig = field(default_factory=ModelTrainConfig)
    fake: ModelTrainConfig = field(default_factory=ModelTrainConfig)
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)


def arch_spec(cfg: DistillConfig) -> Optional[ArchSpec]:
    """The ArchSpec of `model.arch`; None for the pixel-space testbed."""
    arch = cfg.model.arch
    if arch not in ARCH_NAMES:
        raise SwdError(f"model.arch: unknown {arch!r}; choose one of {', '.join(ARCH_NAMES)}")
    return None if arch == "testbed" else ARCHS[arch]


def schedule_name(cfg: DistillConfig) -> str:
    if cfg.schedule:
        return cfg.schedule
    spec = arch_spec(cfg)
    name = "testbed-4" if spec is None else spec.default_schedule
    if not name:
        raise SwdError(f"schedule: arch {cfg.model.arch} has no default schedule; give a preset name or a file")
    return name


def training_schedule(cfg: DistillConfig) -> ScaleSchedule:
    schedule = resolve_schedule(schedule_name(cfg))
    return schedule.at_full_resolution() if objective_class(cfg.objective).full_resolution else schedule


def resolve_config(cfg: DistillConfig, num_blocks: Optional[int] = None) -> DistillConfig:
    """A copy with the arch-dependent defaults filled in: schedule, teacher CFG and feature block.

    The feature block defaults to the arch's (SD3.5-L 20 of 38, SD3.5-M 11 of 24); the testbed,
    whose depth is only known from its weights, takes the middle block (num_blocks // 2).
    """
    cfg = copy.deepcopy(cfg)
    spec = arch_spec(cfg)
    cfg.schedule = schedule_name(cfg)
    if cfg.losses.teacher_cfg is None:
        cfg.losses.teacher_cfg = 4.5 if spec is None else spec.teacher_cfg
    if cfg.losses.feature_block is None:
        if spec is not None:
            cfg.losses.feature_block = spec.feature_block
        elif num_blocks is not None:
            cfg.losses.feature_block = num_blocks // 2
    return cfg


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

    x_in: torch.Tensor  # (B, C, h_i, w_i) latents (pixels for the testbed); video (B, C, f_i, h_i, w_i)
    sigma: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, C, h_i, w_i): real images area-downscaled to s_i (pixels), then encoded
    cond: TextCondition


def make_scale_batch(images: torch.Tensor, cond: TextCondition, schedule: ScaleSchedule, i: int,
                     gen: torch.Generator, device, space=None, process=None) -> ScaleBatch:
    """Training pair of SWD_SPEC section 4 steps 1-2 for pixel images (B, 3, H, W) in [-1, 1], or
    clips (B, 3, F, H, W) with a video schedule.

    The image is area-downscaled in pixel space to the pixel sizes of s_i and s_{i-1} and each is
    encoded by `space` (identity for pixel-space models, a frozen VAE otherwise); clips are
    downscaled in time and space (`resize_clip`) and the lower one upsampled by `upsample_video`.
    `process` is the model's forward process (rectified flow by default; DDPM for noise-prediction UNets).
    """
    space = space or PixelSpace()
    process = process or FLOW
    size = schedule.scales[i]
    video = images.ndim == 5
    shrink = resize_clip if video else resize_area
    time_mode = getattr(space, "time_mode", "linear")
    grow = (lambda x, s, mode: upsample_video(x, s, mode, time_mode)) if video else upsample
    target = space.encode(shrink(images, space.pixel_size(size)))
    sigma_i = schedule.sigmas[i]
    eps = torch.randn(target.shape, generator=gen).to(target.device)
    if i == 0:
        # The first step starts from the sampler's starting point: noise at sigma_0 (pure if 1).
        x_in = process.add_noise(torch.zeros_like(target), sigma_i, eps) if sigma_i < 1 else eps
    else:
        lower = space.encode(shrink(images, space.pixel_size(schedule.scales[i - 1])))
        x_in = process.add_noise(grow(lower, size, "bicubic"), sigma_i, eps)
    b = images.shape[0]
    return ScaleBatch(x_in.to(device), torch.full((b,), sigma_i, device=device), target.to(device), cond.to(device))


def hidden_width(transformer, block: Optional[int] = None) -> int:
    """Width of the image tokens a block outputs (SD3 and FLUX: heads * head_dim, every block; a
    UNet: the channels of `block`'s output, which differ per level)."""
    if model_family(transformer) == "unet":
        if block is None:
            raise SwdError("losses.feature_block: a UNet's feature width depends on the block; give one")
        return adapter_for(transformer).feature_width(block)
    return transformer.config.num_attention_heads * transformer.config.attention_head_dim


def add_lora(transformer, mc: ModelTrainConfig, name: str, family: str = "sd3"):
    """Freeze the model and attach a trainable LoRA (rank > 0), or train every weight (rank 0) but
    those `mc.frozen` matches.

    LoRA targets: `swd.lora.lora_config(family)` (attention q/k/v/out of both streams and both
    feed-forward linears; FLUX also its single blocks' proj_mlp / proj_out, not the final layer).
    LoRA weights are kept in float32 whatever the base's dtype (they are the optimizer's masters).
    """
    if mc.lora_rank <= 0:
        transformer.requires_grad_(True)
        freeze_matching(transformer, mc.frozen, f"{'generator' if name == 'student' else name}.frozen")
        return transformer
    transformer.requires_grad_(False)
    transformer.add_adapter(lora_config(family, mc.lora_rank, mc.lora_alpha or None), adapter_name=name)
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return transformer


def freeze_matching(module: torch.nn.Module, patterns: list[str], where: str) -> None:
    """Freeze the parameters whose names match any pattern (`re.search`); each must match one."""
    check_patterns(patterns, where)
    names = [n for n, _ in module.named_parameters()]
    for pattern in patterns:
        if not any(re.search(pattern, n) for n in names):
            raise SwdError(f"{where}: {pattern!r} matches no parameter of the {type(module).__name__} "
                           f"(names look like {names[len(names) // 2]!r})")
    for n, p in module.named_parameters():
        if any(re.search(pattern, n) for pattern in patterns):
            p.requires_grad_(False)
    if patterns and not any(p.requires_grad for p in module.parameters()):
        raise SwdError(f"{where}: the patterns freeze every parameter; nothing would train")


def shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy whose frozen parameters and buffers ARE the original's (no second allocation)."""
    memo = {id(p): p for p in module.parameters() if not p.requires_grad}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


@dataclass
class DistillModels:
    """Teacher, generator and fake-score model (None for mmd-only): separate named objects."""

    teacher: torch.nn.Module
    generator: torch.nn.Module
    fake: Optional[FakeScore]
    family: str  # sd3 | flux


def build_models(cfg: DistillConfig, teacher: torch.nn.Module, frozen_dtype: Optional[torch.dtype] = None,
                 fake_init: Optional[torch.nn.Module] = None) -> DistillModels:
    """Generator and fake-score model from a teacher already on its device.

    Full copies (lora_rank 0) are taken first, in float32; then the teacher is frozen (and cast
    to `frozen_dtype`, bf16 on GPUs) and LoRA models are built as `shared_copy`s of it, so the
    base weights exist once. Works on the meta device too (the dry run). `fake_init`: a network
    of the teacher's family (another width or depth) to start the fake score from instead of a
    teacher copy; full fine-tuning only.
    """
    if fake_init is not None and cfg.fake.lora_rank > 0:
        raise SwdError("fake.lora_rank: a separate fake-score network (fake_init) is trained in full; set 0")
    # Every random initialisation here (LoRA matrices, the GAN head) comes from the run's seed, not
    # from whatever state torch's global generator is in: a seeded run repeats, on every rank.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return _build_models(cfg, teacher, frozen_dtype, fake_init)


def _build_models(cfg: DistillConfig, teacher: torch.nn.Module, frozen_dtype: Optional[torch.dtype],
                  fake_init: Optional[torch.nn.Module]) -> DistillModels:
    family = model_family(teacher)
    needs_fake = objective_class(cfg.objective).needs_fake(cfg.losses)
    generator = copy.deepcopy(teacher).float() if cfg.generator.lora_rank <= 0 else None
    fake_source = teacher if fake_init is None else fake_init  # copied, never moved: the caller's stays put
    fake_model = None
    if needs_fake and cfg.fake.lora_rank <= 0:
        fake_model = copy.deepcopy(fake_source).float().to(next(teacher.parameters()).device)
    teacher.eval().requires_grad_(False)
    if frozen_dtype is not None:
        # nn.Module.to: diffusers' own .to warns about fp32-kept modules (SD3 and FLUX have none).
        torch.nn.Module.to(teacher, frozen_dtype)
    generator = add_lora(generator if generator is not None else shared_copy(teacher), cfg.generator, "student",
                         family)
    fake = None
    if needs_fake:
        fake_model = add_lora(fake_model if fake_model is not None else shared_copy(teacher), cfg.fake, "fake",
                              family)
        fake = FakeScore(fake_model, GANHead(hidden_width(fake_source, cfg.losses.feature_block)), guidance=cfg.model.flux_guidance)
    if cfg.train.gradient_checkpointing:
        for model in (teacher, generator, fake_model if needs_fake else None):
            if model is not None:
                model.enable_gradient_checkpointing()
    return DistillModels(teacher, generator.train(), fake.train() if fake is not None else None, family)


class TrainableState:
    """The part of a LoRA model a checkpoint keeps: its trainable tensors (the frozen base is the
    teacher's, reloaded from its folder on resume)."""

    def __init__(self, module: torch.nn.Module, names: list[str]):
        self.module, self.names = module, list(names)

    def state_dict(self) -> dict:
        state = self.module.state_dict()
        return {k: state[k] for k in self.names}

    def load_state_dict(self, state: dict) -> None:
        missing, unexpected = set(self.names) - set(state), set(state) - set(self.names)
        if missing or unexpected:
            key = sorted(missing or unexpected)[0]
            raise SwdError(f"checkpoint: {'missing' if missing else 'unexpected'} tensor {key!r} "
                           f"(was it written with another LoRA rank or model?)")
        self.module.load_state_dict(state, strict=False)


def checkpoint_view(module: torch.nn.Module, lora: bool):
    if not lora:
        return module
    return TrainableState(module, [n for n, p in module.named_parameters() if p.requires_grad])


def average_gradients(params, world_size: int) -> None:
    if world_size <= 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size)


def agreed_flag(flag: bool, device) -> bool:
    """The main process's value of a flag, on every process."""
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def trainable(module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def load_teacher(path: str, family: str = "sd3", dtype: Optional[torch.dtype] = None):
    """The teacher transformer from its folder, or from the `transformer/` folder of a pipeline."""
    cls = transformer_class(family)
    folder = pretrained_folder(path, "transformer", "teacher", cls.__name__)
    if family == "sd3" and _saved_class(folder) == "UNet2DConditionModel":
        cls = transformer_class("unet")  # the testbed's other teacher (model.arch testbed covers both)
    # use_safetensors: never fall back to a pickled .bin (diffusers would torch.load it).
    return cls.from_pretrained(folder, use_safetensors=True, **({"dtype": dtype} if dtype is not None else {}))


def _saved_class(folder: Path) -> Optional[str]:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None  # from_pretrained gives the error


def check_teacher(teacher, spec: Optional[ArchSpec]) -> None:
    """The teacher must be the arch the config names (its feature block and defaults depend on it)."""
    family = model_family(teacher)
    expected = "sd3" if spec is None else spec.family
    name = "testbed" if spec is None else spec.name
    if spec is None and family == "unet":
        return  # the testbed's UNet teacher (swd.models.testbed)
    if family != expected:
        raise SwdError(f"model.arch: {name} needs a {transformer_class(expected).__name__} teacher, "
                       f"got {type(teacher).__name__}")
    if spec is not None:
        for key in ("num_layers", "num_single_layers"):
            want, got = spec.transformer.get(key), getattr(teacher.config, key, None)
            if want is not None and want != got:
                raise SwdError(f"model.arch: {name} has {key}={want}, but the teacher has {got}")


def latent_space(cfg: DistillConfig, spec: Optional[ArchSpec], vae, device, dtype):
    if spec is None or spec.vae_downsample == 1:
        if vae is not None:
            raise SwdError(f"model.vae: {cfg.model.arch} works in pixel space and takes no VAE")
        return PixelSpace()
    video = spec.family == "wan"
    if vae is None:
        source = cfg.model.vae or (cfg.teacher if cfg.teacher and (Path(cfg.teacher) / "vae").is_dir() else "")
        if not source:
            raise SwdError(f"model.vae: arch {spec.name} works in a VAE's latent space; set model.vae to an "
                           f"{'AutoencoderKLWan' if video else 'AutoencoderKL'} folder or a pipeline folder")
        vae = load_vae(source, video=video)
    return VideoVaeSpace(vae, device, dtype) if video else VaeSpace(vae, device, dtype)


def check_data(data, space, schedule: ScaleSchedule, teacher) -> None:
    pixels = space.pixel_size(schedule.final_size)
    # Larger images are area-downscaled to every scale anyway (the 32 px UNet teachers train on
    # the 64 px sets the same way); smaller ones would need upsampling, so they are refused.
    # Video: (frames, H, W) of clips (N, 3, F, H, W) against the last scale's pixel size.
    if schedule.is_video and data.train_images.ndim != 5:
        raise SwdError("data: a video schedule trains on clips (N, 3, F, H, W); this data holds images")
    have = tuple(data.train_images.shape[-len(pixels):])
    if have != tuple(pixels) and (space.downsample != 1 or any(h < p for h, p in zip(have, pixels))):
        unit = "" if space.downsample == 1 else f" (latent {schedule.final_size} x VAE factor {space.downsample})"
        raise SwdError(f"schedule: final size {pixels}{unit} differs from the data's images "
                       f"{have}")
    empty = data.empty_condition()
    joint, pooled = text_widths(teacher)  # a UNet without pooled input: pooled None, not checked
    if empty.prompt_embeds.shape[-1] != joint or (pooled is not None and empty.pooled.shape[-1] != pooled):
        raise SwdError(f"data: prompt embeddings are {empty.prompt_embeds.shape[-1]} wide (pooled "
                       f"{empty.pooled.shape[-1]}), but the teacher takes {joint} (pooled {pooled}); "
                       f"encode them with this model's pipeline")


@dataclass
class Trainee:
    """A model's trainable parameters and their AdamW: the update the loop takes on a loss."""

    params: list[torch.nn.Parameter]
    optimizer: Optional[torch.optim.Optimizer]
    grad_clip: float
    world: int  # processes whose gradients are averaged
    settings: ModelTrainConfig  # lr and its cool-down

    def set_lr_for(self, step: int) -> None:
        """The learning rate of generator step `step` (0-based)."""
        if self.optimizer is None:
            return
        s = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr * cooldown_factor(step, s.decay_start, s.decay_steps)

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, average across processes, clip, step; returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.params, self.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return grad_norm


@contextlib.contextmanager
def trainable_now(params: list[torch.nn.Parameter]):
    """Let gradients reach `params` inside the block only (the fake-score model is frozen while
    the generator's losses flow through it)."""
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)


@dataclass
class DistillRun:
    """Everything a distillation loop needs, built by `prepare_run`."""

    cfg: DistillConfig  # resolved
    run_dir: Path
    ckpt_dir: Path
    device: torch.device
    rank: int
    world: int
    main: bool  # the process that logs, samples, evaluates and writes
    data: object
    space: object  # PixelSpace or VaeSpace
    schedule: ScaleSchedule
    models: DistillModels
    gen_adapter: object
    objective: object  # an swd.objectives.Objective
    generator: Trainee
    fake: Trainee  # no parameters for objectives without a fake-score model
    ema: Optional[torch.nn.Module]
    modules: dict  # what a checkpoint holds (LoRA models without their shared frozen base)
    optimizers: dict
    step: int  # generator updates done (resumed runs start at their checkpoint's)
    accelerator: object

    def autocast(self):
        return autocast_context(self.device, self.cfg.train.precision)

    def draw(self, i: int, gen: torch.Generator) -> ScaleBatch:
        """A fresh training batch at scale i."""
        idx = torch.randint(len(self.data.train_images), (self.cfg.train.batch_size,), generator=gen)
        return make_scale_batch(self.data.train_images[idx], self.data.train_condition(idx), self.schedule, i, gen,
                                self.device, self.space, process=getattr(self.gen_adapter, "process", FLOW))

    def student_x0(self, batch: ScaleBatch) -> torch.Tensor:
        """The generator's clean estimate x0_hat at the batch's scale."""
        process = getattr(self.gen_adapter, "process", FLOW)  # flow models: x0 = x - sigma v
        return process.x0(batch.x_in, batch.sigma, self.gen_adapter(batch.x_in, batch.sigma, batch.cond).float())

    @property
    def student(self) -> torch.nn.Module:
        """The model that is evaluated and exported: the EMA when there is one."""
        return self.ema if self.ema is not None else self.models.generator


def train_distill(cfg: DistillConfig, resume: bool = False, data=None, teacher: Optional[torch.nn.Module] = None,
                  vae: Optional[torch.nn.Module] = None, real_score: Optional[torch.nn.Module] = None,
                  evaluation=None, fake_init: Optional[torch.nn.Module] = None) -> "DistillResult":
    """Distill a scale-wise student; returns the exported folder and the trained generator.

    data: a CaptionedData / PromptEmbeddingData (default: from cfg.data); teacher: a diffusers
    transformer (default: loaded from cfg.teacher); vae: an AutoencoderKL for latent archs
    (default: loaded from cfg.model.vae or the teacher's pipeline folder).
    real_score: the score DMD matches (velocity interface, CFG applied); default the teacher's
    adapter. The exact testbed passes its analytic denoiser here, while `teacher` (a network
    regressed onto it) seeds the generator and fake model and gives the MMD features.
    evaluation: `evaluation(model, schedule, device, precision) -> dict`, run by the main process at
    step 0, every train.eval_every steps and at the last step; needed when eval_every > 0 (the
    testbed's: `swd.eval.evaluate.training_evaluation(cfg)`, which `swd distill` passes).
    fake_init: the network the fake score starts from (default: a copy of the teacher); the exact
    testbed uses it to give the fake score more capacity than the teacher copy.
    """
    r = prepare_run(cfg, resume, data, teacher, vae, real_score, evaluation, fake_init)
    tc, schedule, objective, step = r.cfg.train, r.schedule, r.objective, r.step
    n_fake_updates = tc.fake_updates if r.models.fake is not None else 0
    report = Reporter(r, evaluation if tc.eval_every > 0 and r.main else None)
    while step < tc.steps:
        gen = step_generator(tc.seed, r.rank, step)
        i = scale_index(step, schedule.steps, tc.scale_order, gen)
        record = {"step": step + 1, "scale": schedule.scales[i][0]}
        r.generator.set_lr_for(step)
        r.fake.set_lr_for(step)

        # Fake-score (and discriminator) updates on the generator's current samples.
        fake_logs = {}
        with trainable_now(r.fake.params):
            for _ in range(n_fake_updates):
                batch = r.draw(i, gen)
                with torch.no_grad(), r.autocast():
                    x0_hat = r.student_x0(batch)
                with r.autocast():
                    loss, fake_logs = objective.fake_loss(x0_hat, batch.target, batch.cond, gen)
                check_finite(loss, "fake-score", step, r.ckpt_dir)
                r.fake.step(loss)
        record.update({k: v.item() for k, v in fake_logs.items()})

        # Generator update.
        batch = r.draw(i, gen)
        with r.autocast():
            x0_hat = r.student_x0(batch)
            total, terms = objective.generator_loss(x0_hat, batch.target, batch.cond, gen)
        check_finite(total, "generator", step, r.ckpt_dir)
        grad_norm = r.generator.step(total)
        if r.ema is not None:
            ema_update(r.ema, r.models.generator, tc.ema_decay)
        step += 1
        report.pbar.update(1)
        record.update({k: v.item() for k, v in terms.items()}, grad_norm=float(grad_norm),
                      lr=r.generator.optimizer.param_groups[0]["lr"], minutes=report.training_minutes())

        # Log, sample, evaluate, checkpoint; stop early when out of time.
        out_of_time = tc.max_minutes > 0 and report.training_minutes() >= tc.max_minutes
        if tc.max_minutes > 0 and r.world > 1:  # the main process's clock decides, or ranks could part ways
            out_of_time = agreed_flag(out_of_time, r.device)
        last_step = step == tc.steps or out_of_time
        if r.main and (step % tc.log_every == 0 or last_step):
            report.log(record)
        if r.main and (step % tc.sample_every == 0 or last_step):
            report.sample_grid(step)
        if report.evaluation is not None and (step % tc.eval_every == 0 or last_step):
            report.evaluate(step)
        if r.main and (step % tc.checkpoint_every == 0 or last_step):
            save_checkpoint(r.ckpt_dir, step, r.modules, r.optimizers, {"config": to_dict(r.cfg)},
                            keep=tc.keep_checkpoints)
        if out_of_time:
            if r.main:
                print(f"stopping at step {step}: train.max_minutes={tc.max_minutes} reached (resume with --resume)")
            break
    report.close()
    return export_run(r, step)


def prepare_run(cfg: DistillConfig, resume: bool, data, teacher, vae, real_score, evaluation,
                fake_init=None) -> DistillRun:
    """Validate, load, build and (on resume) restore everything the loop uses; write config.yaml."""
    from accelerate import Accelerator

    spec = arch_spec(cfg)
    tc = cfg.train
    run, ckpt_dir = Path(cfg.run_dir), Path(cfg.run_dir) / "checkpoints"
    device_pref = pick_device(tc.device)
    accelerator = Accelerator(cpu=device_pref.type == "cpu")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if not resume and latest_checkpoint(ckpt_dir) is not None:
        raise SwdError(f"run_dir: {run} already has checkpoints; pass --resume or choose another run_dir")
    for name, mc in (("generator", cfg.generator), ("fake", cfg.fake)):
        if mc.decay_start < 0 or mc.decay_steps < 0:
            raise SwdError(f"{name}.decay_start and {name}.decay_steps must be >= 0, got {mc.decay_start}, "
                           f"{mc.decay_steps}")
    # bf16 on a GPU: frozen weights (teacher, LoRA bases, VAE) are stored in bf16, trainable ones in fp32.
    frozen_dtype = torch.bfloat16 if device.type == "cuda" and tc.precision == "bf16" else None
    all_lora = cfg.generator.lora_rank > 0 and cfg.fake.lora_rank > 0

    if data is None:
        if spec is not None and cfg.data.name != "embeddings":
            raise SwdError(f"data.name: arch {spec.name} trains on precomputed prompt embeddings; set data.name: "
                           f"embeddings and data.path to the output of `swd data encode-prompts`")
        data = load_training_data(cfg.data.name, cfg.data.path or None, cfg.data.text_tokens)
    if teacher is None:
        teacher = load_teacher(cfg.teacher, "sd3" if spec is None else spec.family, frozen_dtype if all_lora else None)
    check_teacher(teacher, spec)
    cfg = resolve_config(cfg, num_blocks=adapter_for(teacher).num_blocks)
    lc = cfg.losses
    schedule = training_schedule(cfg)
    models = build_models(cfg, teacher.to(device), frozen_dtype, fake_init)
    teacher, generator_model, fake = models.teacher, models.generator, models.fake
    adapter_kwargs = {"guidance": cfg.model.flux_guidance}
    teacher_adapter = adapter_for(teacher, **adapter_kwargs)
    gen_adapter = adapter_for(generator_model, **adapter_kwargs)
    real_adapter = teacher_adapter if real_score is None else real_score.to(device)
    schedule.check_model(teacher_adapter.patch_size, teacher_adapter.max_latent_size, "teacher")
    space = latent_space(cfg, spec, vae, device, frozen_dtype)
    if space.channels != teacher_adapter.latent_channels:
        raise SwdError(f"model.vae: {space.channels} latent channels, but the teacher takes "
                       f"{teacher_adapter.latent_channels}")
    check_data(data, space, schedule, teacher)
    teacher_adapter.block(lc.feature_block)  # validates the index against the model
    check_evaluation(cfg, evaluation)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(dump_config(cfg))

    source = lc.feature_source if lc.feature_source != "auto" else ("fake" if fake is not None else "teacher")
    if source == "fake" and fake is None:
        raise SwdError("losses.feature_source: 'fake' needs a fake-score model (objective mmd-only has none)")
    if source not in ("fake", "teacher"):
        raise SwdError(f"losses.feature_source: must be auto, teacher or fake, got {source!r}")
    critics = Critics(real=real_adapter, features=fake.adapter if source == "fake" else teacher_adapter, fake=fake,
                      uncond=data.empty_condition().to(device), feature_block=lc.feature_block)
    objective = objective_class(cfg.objective)(lc, critics)
    gen_lora, fake_lora = cfg.generator.lora_rank > 0, cfg.fake.lora_rank > 0
    ema = None
    if tc.ema_decay > 0:
        ema = (shared_copy(generator_model) if gen_lora else copy.deepcopy(generator_model)).requires_grad_(False)

    def adamw(params, mc: ModelTrainConfig):
        return torch.optim.AdamW(params, lr=mc.lr, betas=tuple(mc.betas), weight_decay=mc.weight_decay)

    gen_names = [n for n, p in generator_model.named_parameters() if p.requires_grad]
    gen_params = trainable(generator_model)
    fake_params = trainable(fake) if fake is not None else []
    generator = Trainee(gen_params, adamw(gen_params, cfg.generator), tc.grad_clip, world, cfg.generator)
    fake_trainee = Trainee(fake_params, adamw(fake_params, cfg.fake) if fake is not None else None, tc.grad_clip,
                           world, cfg.fake)
    # LoRA models are checkpointed without their (shared, frozen) base weights.
    modules = {"generator": checkpoint_view(generator_model, gen_lora),
               **({"fake": checkpoint_view(fake, fake_lora)} if fake is not None else {}),
               **({"ema": TrainableState(ema, gen_names) if gen_lora else ema} if ema is not None else {})}
    optimizers = {"generator": generator.optimizer,
                  **({"fake": fake_trainee.optimizer} if fake is not None else {})}

    step = 0
    if resume:
        last = latest_checkpoint(ckpt_dir)
        if last is None:
            raise SwdError(f"--resume: no checkpoint in {ckpt_dir}")
        step = load_checkpoint(last, modules, optimizers)["step"]
        if main:  # steps logged after that checkpoint are repeated now: drop their old records
            trim_log(run / "log.jsonl", step)
        if main:
            print(f"resumed from {last.name}")
    if main:
        weights = objective_class(cfg.objective).loss_weights(lc)
        print(f"distill: {cfg.model.arch} ({models.family}), objective {cfg.objective} {weights}; "
              f"schedule {schedule.name} {[s[0] for s in schedule.scales]}; feature block {lc.feature_block} of "
              f"{teacher_adapter.num_blocks}; {sum(p.numel() for p in gen_params) / 1e6:.2f}M trainable generator "
              f"params; {world} process(es) on {device}")
    return DistillRun(cfg, run, ckpt_dir, device, rank, world, main, data, space, schedule, models, gen_adapter,
                      objective, generator, fake_trainee, ema, modules, optimizers, step, accelerator)


def check_evaluation(cfg: DistillConfig, evaluation) -> None:
    tc = cfg.train
    if tc.eval_every < 0 or tc.eval_n < 4:
        raise SwdError(f"train.eval_every / eval_n: need eval_every >= 0 and eval_n >= 4 (precision and recall "
                       f"use 3 neighbours), got {tc.eval_every}, {tc.eval_n}")
    if tc.eval_every > 0 and evaluation is None:
        raise SwdError("train.eval_every: in-training evaluation needs an evaluation callback "
                       "(`swd distill` passes swd.eval.evaluate.training_evaluation(cfg)); or set it to 0")


class Reporter:
    """What the main process writes while a run trains: log.jsonl, TensorBoard scalars, the
    progress bar, sample grids and in-training evaluations (timed apart from training)."""

    def __init__(self, r: DistillRun, evaluation):
        tc = r.cfg.train
        self.r = r
        self.log_file = open(r.run_dir / "log.jsonl", "a") if r.main else None
        self.board = tensorboard_writer(r.run_dir / "tensorboard") if r.main else None
        self.evaluation = evaluation if r.main and tc.eval_every > 0 else None
        self.eval_seconds = 0.0
        self.started = time.time()
        self.pbar = tqdm(total=tc.steps, initial=r.step, desc=f"distill {r.cfg.objective}", disable=not r.main,
                         dynamic_ncols=True)
        if self.evaluation is not None and r.step == 0:
            self.evaluate(0)

    def training_minutes(self) -> float:
        return (time.time() - self.started - self.eval_seconds) / 60

    def log(self, record: dict) -> None:
        self.log_file.write(json.dumps(record) + "\n")
        if self.board is not None:  # one scalar per loss and per scale: losses differ by scale
            for key, value in record.items():
                if key not in ("step", "scale"):
                    self.board.add_scalar(f"{key}/scale_{record['scale']}", value, record["step"])
        self.log_file.flush()
        self.pbar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("dmd", "mmd", "gan", "fake")},
                              scale=record["scale"])

    def sample_grid(self, step: int) -> None:
        r = self.r
        images = student_samples(r.gen_adapter, r.data, r.schedule, r.device, r.cfg.train.precision, r.space)
        path = r.run_dir / "samples" / f"step_{step:08d}.png"
        if images.ndim == 5:  # clips: one row of frames per held-out prompt
            n, frames = images.shape[0], images.shape[2]
            save_grid(images.transpose(1, 2).flatten(0, 1), path, ncol=frames,
                      row_titles=r.data.heldout_captions[:n])
            return
        save_grid(images, path, labels=r.data.heldout_captions[: len(images)])

    def evaluate(self, at_step: int) -> None:
        """Score the model that gets exported (EMA if any) and log it. Sampling uses its own RNG and
        evaluation time is left out of train.max_minutes, so a run with evaluation trains exactly
        as one without."""
        r = self.r
        began = time.time()
        metrics = self.evaluation(r.student, r.schedule, r.device, r.cfg.train.precision)
        self.eval_seconds += time.time() - began
        self.log_file.write(json.dumps({"step": at_step, "eval": metrics}) + "\n")
        self.log_file.flush()
        if self.board is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.board.add_scalar(f"eval/{key}", value, at_step)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        self.pbar.write(f"step {at_step}: {shown}")

    def close(self) -> None:
        self.pbar.close()
        if self.log_file is not None:
            self.log_file.close()
        if self.board is not None:
            self.board.close()


def export_run(r: DistillRun, step: int) -> "DistillResult":
    """Write the student (merged, and as LoRA files for LoRA generators) from the main process."""
    tc, gen_lora = r.cfg.train, r.cfg.generator.lora_rank > 0
    export, lora_dir = r.run_dir / "student", r.run_dir / "student-lora"
    if r.main:
        if gen_lora:
            export_lora(r.student, lora_dir, r.schedule, "student")
            print(f"student LoRA written to {lora_dir}")
        if tc.export_merged or not gen_lora:
            export_student(r.student, export, r.schedule)
            print(f"student written to {export}")
    r.accelerator.wait_for_everyone()
    return DistillResult(export if tc.export_merged or not gen_lora else lora_dir, r.models.generator, step,
                         lora_dir if gen_lora else None, r.models.fake)


@dataclass
class DistillResult:
    export_dir: Path  # written by the main process: the merged student, or the LoRA folder
    generator: torch.nn.Module  # this process's replica
    step: int
    lora_dir: Optional[Path] = None  # LoRA students: diffusers + ComfyUI LoRA files
    fake: Optional[torch.nn.Module] = None  # this process's fake-score model and GAN head (DMD objectives)


def tensorboard_writer(folder: Path):
    """A TensorBoard writer when the `tensorboard` package is installed, else None (jsonl only)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def check_finite(loss: torch.Tensor, what: str, step: int, ckpt_dir: Path) -> None:
    if not torch.isfinite(loss):
        raise SwdError(f"training diverged: the {what} loss is {loss.item()} at step {step + 1}; "
                       f"the last good checkpoint is kept in {ckpt_dir}")


@torch.no_grad()
def student_samples(adapter, data, schedule: ScaleSchedule, device, precision: str, space=None,
                    n: int = 16, seed: int = 0) -> torch.Tensor:
    """A grid of the student's samples on the held-out prompts, as pixel images in [-1, 1]."""
    space = space or PixelSpace()
    n = min(n, len(data.heldout_captions))
    cond = data.heldout_condition(n).to(device)
    was_training = adapter.training
    adapter.eval()
    with autocast_context(device, precision):
        x = sample(adapter, schedule, cond, generator=make_generator(seed), device=device,
                   time_mode=getattr(space, "time_mode", "linear"))
    adapter.train(was_training)
    return space.decode(x.float()).float().clamp(-1, 1)


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights with every LoRA folded in (W + scale B A), under plain diffusers keys, on CPU.

    Computed out of place: the base weights, possibly shared with the teacher, are not touched.
    """
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                delta = module.get_delta_weight(adapter).detach()
                key = f"{name}.weight"
                deltas[key] = delta if key not in deltas else deltas[key] + delta
    state = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        if key in deltas:
            value = (value.float() + deltas[key].float()).to(value.dtype) if value.dtype != torch.float32 \
                else value + deltas[key]
        state[key] = value.detach().cpu().contiguous()
    return state


def export_student(model, folder: Path, schedule: ScaleSchedule) -> None:
    """Save the student as a plain diffusers model (LoRA merged) plus its schedule.

    Small models go in 15 MB shards (they travel through size-limited transfers), large ones in 5 GB.
    """
    if getattr(model, "peft_config", None):
        state = merged_state_dict(model)
        with torch.device("meta"):
            plain = type(model).from_config(model.config)
        plain.load_state_dict(state, assign=True)
        model = plain
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size="15MB" if n_params < 200e6 else "5GB", safe_serialization=True)
    schedule.save(folder / "schedule.yaml")


def export_lora(model, folder: Path, schedule: ScaleSchedule, adapter_name: str) -> None:
    """The student LoRA in diffusers' layout (`load_lora_weights`, `swd.lora.load_lora`) and as one
    ComfyUI file, plus the schedule."""
    folder.mkdir(parents=True, exist_ok=True)
    save_lora(model, folder, "diffusers", adapter_name=adapter_name)
    save_lora(model, folder / "student_comfyui.safetensors", "comfyui", adapter_name=adapter_name)
    schedule.save(folder / "schedule.yaml")
