"""Sampling latency: teacher, full-resolution few-step and scale-wise students, side by side.

What is timed is the transformer's work in one sampling run (latents in, latents out; no text
encoder, no VAE), batch 1 by default, median of repeats after warm-up. On CUDA the timer is a
pair of device events; elsewhere `time.perf_counter`.

Eager execution is launch-bound at low resolution: a 64x64-latent forward of SD3.5-L costs
almost as much wall time as a 128x128 one, which hides SwD's saving. On CUDA the adapter is
wrapped in `swd.models.graphs.CudaGraphAdapter` (the pipelines' wrapper): one captured graph
per latent shape, replayed, so each step costs its compute.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from swd.errors import SwdError
from swd.models.base import TextCondition
from swd.sampling import conditioned, guided, make_generator, sample_scalewise, sample_teacher
from swd.schedules import ScaleSchedule


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> list[float]:
    """Seconds per call of fn, after warm-up calls (which also capture graphs)."""
    if repeats < 1:
        raise SwdError(f"--repeats: must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


@dataclass
class LatencyRow:
    label: str
    steps: int
    forwards: int  # transformer calls (CFG runs both prompts in one call)
    batch_per_forward: int
    seconds: float  # median
    all_seconds: list[float] = field(default_factory=list)
    ratio_to_full: float | None = None  # vs the full-resolution few-step run with the same steps
    ratio_to_teacher: float | None = None


def bench_sampling(
    adapter,
    cond: TextCondition,
    uncond: TextCondition,
    schedules: list[ScaleSchedule],
    device: torch.device,
    dtype: torch.dtype,
    teacher_steps: int = 28,
    teacher_cfg: float = 4.5,
    graphs: bool = True,
    warmup: int = 2,
    repeats: int = 5,
    include_full: bool = True,
) -> list[LatencyRow]:
    """Time the teacher, and for each schedule the scale-wise and full-resolution samplers."""
    batch = cond.batch_size
    channels = adapter.latent_channels
    if graphs and device.type == "cuda":
        from swd.models.graphs import CudaGraphAdapter

        adapter = CudaGraphAdapter(adapter)

    def run_schedule(sched: ScaleSchedule, den):
        return lambda: sample_scalewise(den, sched, batch, channels, generator=make_generator(0), device=device, dtype=dtype)

    rows: list[LatencyRow] = []
    with torch.inference_mode():
        if teacher_steps > 0:
            den = guided(adapter, cond, uncond, teacher_cfg)
            size = schedules[0].final_size if schedules else None
            fn = lambda: sample_teacher(den, size, batch, channels, steps=teacher_steps, generator=make_generator(0),
                                        device=device, dtype=dtype)
            times = time_call(fn, device, warmup, repeats)
            rows.append(LatencyRow(f"teacher {teacher_steps} steps" + (f" + CFG {teacher_cfg}" if teacher_cfg != 1 else ""),
                                   teacher_steps, teacher_steps, batch * (2 if teacher_cfg != 1 else 1),
                                   statistics.median(times), times))
        for sched in schedules:
            den = conditioned(adapter, cond)
            full_row = None
            if include_full and sched.is_scale_wise:
                times = time_call(run_schedule(sched.at_full_resolution(), den), device, warmup, repeats)
                full_row = LatencyRow(f"full resolution {sched.steps} steps", sched.steps, sched.steps, batch,
                                      statistics.median(times), times)
                rows.append(full_row)
            times = time_call(run_schedule(sched, den), device, warmup, repeats)
            row = LatencyRow(f"{'SwD' if sched.is_scale_wise else 'few-step'} {sched.name}", sched.steps, sched.steps,
                             batch, statistics.median(times), times)
            if full_row is not None:
                row.ratio_to_full = row.seconds / full_row.seconds
            rows.append(row)
    teacher = rows[0] if teacher_steps > 0 else None
    for row in rows:
        if teacher is not None:
            row.ratio_to_teacher = row.seconds / teacher.seconds
    return rows


def random_condition(arch_text_tokens: int, joint_dim: int, pooled_dim: int, batch: int, device, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, arch_text_tokens, joint_dim, generator=g).to(device, dtype)
    pooled = torch.randn(batch, pooled_dim, generator=g).to(device, dtype)
    return TextCondition(states, pooled), TextCondition(torch.zeros_like(states), torch.zeros_like(pooled))


def format_rows(rows: list[LatencyRow], title: str) -> str:
    lines = [title, f"{'run':<38} {'steps':>5} {'median s':>10} {'vs full-res':>11} {'vs teacher':>10}"]
    for r in rows:
        full = f"{r.ratio_to_full:.3f}" if r.ratio_to_full is not None else "-"
        teach = f"{r.ratio_to_teacher:.4f}" if r.ratio_to_teacher is not None else "-"
        lines.append(f"{r.label:<38} {r.steps:>5} {r.seconds:>10.4f} {full:>11} {teach:>10}")
    return "\n".join(lines)


def rows_to_dicts(rows: list[LatencyRow]) -> list[dict]:
    return [asdict(r) for r in rows]
