"""Transformer FLOPs of a sampling run: SwD schedule vs the same steps at full resolution vs the teacher.

A sampling run's transformer cost is the sum of its forwards, and a forward's cost depends only on
the latent size (and batch). So we count ONE forward per distinct latent size, at batch 1 with the
arch's text length, and sum over steps:

    SwD       = sum_i F(s_i)                     (one forward per step, no CFG)
    full-res  = steps * F(s_last)                (the same sigmas at constant full resolution)
    teacher   = teacher_steps * F(s_last) * (2 if CFG else 1)

CFG runs the conditional and unconditional prompt as one batch of 2, which costs exactly twice a
batch-1 forward: every counted op (matmuls, convolutions, attention) is linear in the batch.

Counting uses `torch.utils.flop_counter.FlopCounterMode` on a model of the real config built on the
meta device (no memory, no weights, no download), run through the adapter so FLUX packing and RoPE
ids take their real path. Convention: 1 multiply-add = 2 FLOPs; matmuls, convolutions and
attention are counted, elementwise ops (norms, activations, RoPE) are not.

Why meta: on meta, `scaled_dot_product_attention` falls back to its math path (two `bmm`s that
the counter sees). On a real CPU tensor torch picks `_scaled_dot_product_flash_attention_for_cpu`,
which the counter has no formula for and would silently count as 0; `_count` refuses such counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from swd.errors import SwdError
from swd.models.base import TextCondition
from swd.models.configs import ArchSpec, get_arch
from swd.schedules import ScaleSchedule, resolve_schedule

TEACHER_STEPS = 28  # SD3.5's default Euler grid (SWD_SPEC section 1)

Size = tuple[int, ...]  # latent (h, w), or (frames, h, w) for video


def is_attention_op(op_name: str) -> bool:
    """Ops that carry attention FLOPs: SDPA's math path (bmm) or a fused SDPA kernel.

    The adapters' linear layers run as mm/addmm, never bmm, so on these models bmm is attention.
    """
    return "bmm" in op_name or "attention" in op_name


def build_meta_adapter(arch: ArchSpec | str):
    """The arch's model (SD3 / FLUX transformer or UNet) on the meta device, wrapped in its adapter."""
    from swd.models import adapter_for

    arch = get_arch(arch) if isinstance(arch, str) else arch
    return adapter_for(arch.build("meta").eval())


class ForwardFlopCounter:
    """FLOPs of one transformer forward per latent size, counted on the meta device and cached.

    counter = ForwardFlopCounter("sd35-large"); counter.count((128, 128)) -> int
    """

    def __init__(self, arch: ArchSpec | str, text_tokens: int | None = None):
        self.arch = get_arch(arch) if isinstance(arch, str) else arch
        self.text_tokens = self.arch.text_tokens if text_tokens is None else int(text_tokens)
        if self.text_tokens < 1:
            raise SwdError(f"text_tokens: must be >= 1, got {self.text_tokens}")
        self.adapter = build_meta_adapter(self.arch)
        self._cache: dict[tuple[Size, int], dict[str, int]] = {}

    @property
    def patch_size(self) -> int:
        return self.adapter.patch_size

    @property
    def max_latent_size(self) -> int | None:
        return self.adapter.max_latent_size

    def image_tokens(self, size: Size) -> int:
        patch = self.patch_size
        patch = (patch, patch) if isinstance(patch, int) else patch
        return math.prod(v // p for v, p in zip(size, patch))

    def check_schedule(self, schedule: ScaleSchedule) -> None:
        schedule.check_model(self.patch_size, self.max_latent_size, what=f"{self.arch.name} model")

    def count_by_op(self, size: Size | int, batch: int = 1) -> dict[str, int]:
        """FLOPs of one forward at latent `size` (h, w) or (frames, h, w), split by aten op (e.g. 'aten.addmm')."""
        size = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        key = (size, int(batch))
        if key not in self._cache:
            self._cache[key] = self._count(size, batch)
        return dict(self._cache[key])

    def count(self, size: Size | int, batch: int = 1) -> int:
        return sum(self.count_by_op(size, batch).values())

    def attention_flops(self, size: Size | int, batch: int = 1) -> int:
        return sum(v for k, v in self.count_by_op(size, batch).items() if is_attention_op(k))

    def _count(self, size: Size, batch: int) -> dict[str, int]:
        from torch.utils.flop_counter import FlopCounterMode

        ScaleSchedule(scales=(size,), sigmas=(1.0,)).check_model(
            self.patch_size, self.max_latent_size, what=f"{self.arch.name} model"
        )
        from swd.models import text_widths

        joint, pooled = text_widths(self.adapter)
        meta = torch.device("meta")
        x = torch.empty(batch, self.adapter.latent_channels, *size, device=meta)  # (B, C, [F,] H, W)
        cond = TextCondition(
            torch.empty(batch, self.text_tokens, joint, device=meta),  # (B, L, D_joint)
            torch.empty(batch, pooled or joint, device=meta),  # (B, D_pooled); a UNet without it ignores it
        )
        sigma = torch.ones(batch, device=meta)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            self.adapter(x, sigma, cond)
        by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
        if not any(is_attention_op(op) and n > 0 for op, n in by_op.items()):
            # The counter missed the attention kernel: the totals would be silently too low.
            raise RuntimeError(
                f"no attention FLOPs counted for {self.arch.name} (ops: {sorted(by_op)}); "
                "SDPA ran through a kernel torch's flop counter has no formula for"
            )
        return by_op


_COUNTERS: dict[str, ForwardFlopCounter] = {}


def _counter_for(arch: ArchSpec, text_tokens: int | None) -> ForwardFlopCounter:
    # Keyed by the full spec, so a custom ArchSpec reusing a name does not read another's counts.
    key = json.dumps([arch.family, arch.transformer, arch.text_tokens, text_tokens], sort_keys=True, default=str)
    if key not in _COUNTERS:
        _COUNTERS[key] = ForwardFlopCounter(arch, text_tokens)
    return _COUNTERS[key]


def check_schedule_fits(arch: ArchSpec | str, schedule: ScaleSchedule, text_tokens: int | None = None) -> None:
    """Raise SwdError unless every scale suits the arch (patch size, largest latent side)."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    _counter_for(arch, text_tokens).check_schedule(schedule)


def count_forward_flops(arch: ArchSpec | str, size: Size | int, batch: int = 1, text_tokens: int | None = None) -> int:
    """FLOPs of one transformer forward of `arch` at latent `size` (cached per process)."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    return _counter_for(arch, text_tokens).count(size, batch)


@dataclass(frozen=True)
class RunFlops:
    """Transformer FLOPs of one sampling run (batch 1 image)."""

    label: str
    steps: int
    forwards: int  # batch-1 transformer forwards; a CFG step counts 2
    flops: int
    scales: tuple[Size, ...]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "steps": self.steps,
            "forwards": self.forwards,
            "flops": self.flops,
            "tflops": self.flops / 1e12,
            "scales": [list(s) for s in self.scales],
        }


@dataclass(frozen=True)
class ScaleFlops:
    """One forward at one latent size, and how many SwD steps run at it."""

    size: Size
    image_tokens: int
    text_tokens: int
    flops: int
    attention_flops: int
    swd_steps: int

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "image_tokens": self.image_tokens,
            "text_tokens": self.text_tokens,
            "flops": self.flops,
            "tflops": self.flops / 1e12,
            "attention_flops": self.attention_flops,
            "attention_share": self.attention_flops / self.flops,
            "swd_steps": self.swd_steps,
        }


@dataclass(frozen=True)
class FlopReport:
    arch: str
    schedule: ScaleSchedule
    text_tokens: int
    teacher_cfg: bool
    swd: RunFlops
    full: RunFlops  # same sigmas, every step at the final size
    teacher: RunFlops
    per_scale: tuple[ScaleFlops, ...] = field(default=())

    @property
    def swd_over_full_ratio(self) -> float:
        return self.swd.flops / self.full.flops

    @property
    def swd_over_teacher_ratio(self) -> float:
        return self.swd.flops / self.teacher.flops

    @property
    def token_ratio(self) -> float:
        """Image tokens of the SwD run over the full-resolution run's (SWD_SPEC section 2: 2.2 / 4)."""
        swd = sum(sc.image_tokens * sc.swd_steps for sc in self.per_scale)
        return swd / (self.per_scale[-1].image_tokens * self.swd.steps)

    @property
    def full_over_teacher_ratio(self) -> float:
        return self.full.flops / self.teacher.flops

    @property
    def runs(self) -> tuple[RunFlops, RunFlops, RunFlops]:
        return (self.swd, self.full, self.teacher)

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "schedule": self.schedule.to_dict(),
            "batch": 1,
            "text_tokens": self.text_tokens,
            "convention": "FLOPs = 2 x multiply-adds of matmuls, convolutions and attention "
                          "(torch.utils.flop_counter on the meta device); elementwise ops not counted",
            "teacher_cfg": self.teacher_cfg,
            "runs": {"swd": self.swd.to_dict(), "full_resolution": self.full.to_dict(), "teacher": self.teacher.to_dict()},
            "per_scale": [s.to_dict() for s in self.per_scale],
            "swd_over_full_ratio": self.swd_over_full_ratio,
            "swd_over_teacher_ratio": self.swd_over_teacher_ratio,
            "full_over_teacher_ratio": self.full_over_teacher_ratio,
            "image_token_ratio": self.token_ratio,
        }


def _run(label: str, sizes, forwards_per_step: int, per_size: dict[Size, int]) -> RunFlops:
    sizes = tuple(sizes)
    return RunFlops(
        label=label,
        steps=len(sizes),
        forwards=len(sizes) * forwards_per_step,
        flops=sum(per_size[s] for s in sizes) * forwards_per_step,
        scales=sizes,
    )


def sampling_flops(
    arch: ArchSpec | str,
    schedule: ScaleSchedule | str | None = None,
    teacher_steps: int | None = None,
    cfg: bool | None = None,
    text_tokens: int | None = None,
    progress: bool = False,
) -> FlopReport:
    """Transformer FLOPs of one image sampled with `schedule`, at full resolution, and by the teacher.

    schedule: a ScaleSchedule, preset name or YAML/JSON path; None takes arch.default_schedule.
    teacher_steps: None takes the arch's (SD3.5: 28, Wan2.1: 50).
    cfg: whether the teacher uses classifier-free guidance (2 forwards per step); None follows the
        arch (teacher_cfg > 1: SD3.5 yes, FLUX-dev no, its guidance is embedded in one forward).
    progress: a tqdm bar over the distinct sizes on stderr (shown only on a terminal).
    """
    arch = get_arch(arch) if isinstance(arch, str) else arch
    if schedule is None:
        if not arch.default_schedule:
            raise SwdError(f"schedule: arch {arch.name!r} has no default schedule; pass one")
        schedule = arch.default_schedule
    schedule = resolve_schedule(schedule)
    teacher_steps = arch.teacher_steps if teacher_steps is None else teacher_steps
    if isinstance(teacher_steps, bool) or not isinstance(teacher_steps, int) or teacher_steps < 1:
        raise SwdError(f"teacher_steps: must be an int >= 1, got {teacher_steps!r}")
    cfg = arch.teacher_cfg > 1.0 if cfg is None else bool(cfg)

    counter = _counter_for(arch, text_tokens)
    counter.check_schedule(schedule)
    final = schedule.final_size
    sizes = list(dict.fromkeys([*schedule.scales, final]))  # distinct, in order

    from tqdm import tqdm

    bar = tqdm(sizes, desc="forwards", unit="size", disable=None if progress else True, leave=False)
    per_size: dict[Size, int] = {}
    for size in bar:
        bar.set_postfix_str(_shown(size))
        per_size[size] = counter.count(size)

    per_scale = tuple(
        ScaleFlops(
            size=s,
            image_tokens=counter.image_tokens(s),
            text_tokens=counter.text_tokens,
            flops=per_size[s],
            attention_flops=counter.attention_flops(s),
            swd_steps=schedule.scales.count(s),
        )
        for s in dict.fromkeys(schedule.scales)
    )
    return FlopReport(
        arch=arch.name,
        schedule=schedule,
        text_tokens=counter.text_tokens,
        teacher_cfg=cfg,
        swd=_run(f"SwD ({schedule.name})", schedule.scales, 1, per_size),
        full=_run(f"full resolution {_shown(final)}", [final] * schedule.steps, 1, per_size),
        teacher=_run(f"teacher {teacher_steps} steps" + (" + CFG" if cfg else ""), [final] * teacher_steps,
                     2 if cfg else 1, per_size),
        per_scale=per_scale,
    )


def _shown(size: Size) -> str:
    return "x".join(str(v) for v in size)


def format_report(report: FlopReport) -> str:
    """The human-readable table `swd bench flops` prints."""
    s = report.schedule
    lines = [
        f"transformer FLOPs of one {_shown(s.final_size)}-latent {'video' if s.is_video else 'image'}: {report.arch}, "
        f"schedule {s.name} (batch 1, {report.text_tokens} text tokens)",
        "",
        f"{'run':<34} {'steps':>5} {'forwards':>8} {'TFLOPs':>9} {'vs SwD':>8}  {'vs full-res':>11}",
    ]
    for run in report.runs:
        lines.append(
            f"{run.label:<34} {run.steps:>5} {run.forwards:>8} {run.flops / 1e12:>9.2f} "
            f"{run.flops / report.swd.flops:>8.3f}  {run.flops / report.full.flops:>11.3f}"
        )
    lines += [
        "",
        f"{'per forward at':<14} {'image tok':>9} {'TFLOPs':>8} {'attention':>9} {'SwD steps':>9}",
    ]
    for sc in report.per_scale:
        lines.append(
            f"{_shown(sc.size):<14} {sc.image_tokens:>9} {sc.flops / 1e12:>8.3f} "
            f"{100 * sc.attention_flops / sc.flops:>8.1f}% {sc.swd_steps:>9}"
        )
    cfg_note = ("teacher CFG runs the conditional and unconditional prompt together: 2 forwards per step"
                if report.teacher_cfg else "teacher without CFG: 1 forward per step")
    lines += [
        "",
        f"SwD / full-res: {report.swd_over_full_ratio:.3f}   SwD / teacher: {report.swd_over_teacher_ratio:.4f}   "
        f"(image tokens alone: {report.token_ratio:.3f})",
        cfg_note + ".",
        "FLOPs = 2 x multiply-adds of matmuls, convolutions and attention, from torch.utils.flop_counter "
        "on the meta device; elementwise ops not counted.",
    ]
    return "\n".join(lines)


def arch_of_model(transformer: torch.nn.Module, name: str = "model", text_tokens: int = 16) -> ArchSpec:
    """An ArchSpec of a concrete diffusers transformer (e.g. a testbed model loaded from a folder),
    so its sampling runs can be counted on the meta device like the real configs."""
    from swd.lora import model_family

    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    return ArchSpec(name=name, family=model_family(transformer), transformer=config, text_tokens=int(text_tokens))


def model_sampling_flops(
    transformer: torch.nn.Module,
    schedule: ScaleSchedule | None,
    text_tokens: int,
    teacher_steps: int = TEACHER_STEPS,
    guidance: float = 1.0,
) -> int:
    """Transformer FLOPs of sampling ONE image from this model: the scale-wise sampler over
    `schedule`, or (schedule None) the teacher's `teacher_steps` Euler steps at the model's
    sample size, with CFG (2 forwards per step) unless guidance is 1 (`swd.sampling.guided`)."""
    arch = arch_of_model(transformer, text_tokens=text_tokens)
    if schedule is not None:
        return sampling_flops(arch, schedule, text_tokens=text_tokens).swd.flops
    size = int(transformer.config.sample_size)
    one_scale = ScaleSchedule(scales=((size, size),), sigmas=(1.0,))
    report = sampling_flops(arch, one_scale, teacher_steps=teacher_steps, cfg=guidance != 1.0,
                            text_tokens=text_tokens)
    return report.teacher.flops
