"""Sampling latency: teacher, full-resolution few-step and scale-wise students, side by side.

What is timed is the transformer's work in one sampling run (latents in, latents out; no text
encoder, no VAE), batch 1 by default, median of repeats after warm-up. On CUDA the timer is a
pair of device events; elsewhere `time.perf_counter`.

Eager execution is overhead-bound at low resolution: a 64x64-latent forward of SD3.5-L costs
almost as much wall time as a 128x128 one, which hides SwD's saving. `compiled=True` times the
fast path instead (`swd.models.compiled.CompiledAdapter`: torch.compile with one static graph per
latent size, CUDA graphs on CUDA); the compilation is timed apart, in `compile_seconds`.

The scale-wise run and the full-resolution run it is compared with are timed interleaved (one
of each per repeat), so that load from other processes falls on both alike and their ratio is
steadier than either time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from swd.errors import SwdError
from swd.models.base import TextCondition
from swd.sampling import TeacherSampler, make_generator, sample
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


def time_interleaved(fns: list[Callable[[], object]], device: torch.device, warmup: int = 2,
                     repeats: int = 5) -> list[list[float]]:
    """Seconds per call of each fn, timed in turn within every repeat (fn0, fn1, fn0, fn1, ...)."""
    if repeats < 1:
        raise SwdError(f"--repeats: must be >= 1, got {repeats}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            out.extend(time_call(fn, device, warmup=0, repeats=1))
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
    batch: int = 1  # images per sampling run
    mode: str = "eager"  # eager | compiled
    threads: int | None = None  # torch intra-op threads (CPU)
    compile_seconds: float | None = None  # compiled: first calls at the shapes this row added

    @property
    def ms_per_image(self) -> float:
        return self.seconds / self.batch * 1000.0


def bench_sampling(
    adapter,
    cond: TextCondition,
    uncond: TextCondition,
    schedules: list[ScaleSchedule],
    device: torch.device,
    dtype: torch.dtype,
    teacher_steps: int = 28,
    teacher_cfg: float = 4.5,
    compiled: bool = False,
    warmup: int = 2,
    repeats: int = 5,
    include_full: bool = True,
) -> list[LatencyRow]:
    """Time the teacher, and for each schedule the scale-wise and full-resolution samplers.

    adapter: an adapter, or a `CompiledAdapter` to reuse graphs compiled earlier; with
    compiled=True a plain adapter is wrapped here. Each row's `compile_seconds` is the time of
    the first calls at the shapes it met first (so a shape shared by two rows counts once).
    """
    from swd.models.compiled import CompiledAdapter, warm_up

    batch = cond.batch_size
    if compiled and not isinstance(adapter, CompiledAdapter):
        adapter = CompiledAdapter(adapter, device)
    is_compiled = isinstance(adapter, CompiledAdapter)
    mode = "compiled" if is_compiled else "eager"
    threads = torch.get_num_threads() if device.type == "cpu" else None

    def run(spec, size=None):
        """One sampling run with `spec`, from the same noise every call."""
        return lambda: sample(adapter, spec, cond, uncond, generator=make_generator(0), device=device, size=size,
                              dtype=dtype)

    def compile_now(fn) -> float | None:
        """Warm the compiled path up on fn (every shape it meets); seconds of the new first calls."""
        if not is_compiled:
            return None
        before = set(adapter.compile_seconds)
        warm_up(fn, device)
        return sum(s for k, s in adapter.compile_seconds.items() if k not in before)

    def row(label, steps, forwards, per_forward, times, compile_s) -> LatencyRow:
        return LatencyRow(label, steps, forwards, per_forward, statistics.median(times), times, batch=batch,
                          mode=mode, threads=threads, compile_seconds=compile_s)

    rows: list[LatencyRow] = []
    with torch.inference_mode():
        if teacher_steps > 0:
            # At the schedules' final size (without schedules, the model's sample size).
            fn = run(TeacherSampler(steps=teacher_steps, guidance=teacher_cfg),
                     schedules[0].final_size if schedules else None)
            compile_s = compile_now(fn)
            times = time_call(fn, device, warmup, repeats)
            rows.append(row(f"teacher {teacher_steps} steps" + (f" + CFG {teacher_cfg}" if teacher_cfg != 1 else ""),
                            teacher_steps, teacher_steps, batch * (2 if teacher_cfg != 1 else 1), times, compile_s))
        for sched in schedules:
            label = f"{'SwD' if sched.is_scale_wise else 'few-step'} {sched.name}"
            if include_full and sched.is_scale_wise:
                full_fn, fn = run(sched.at_full_resolution()), run(sched)
                full_compile, compile_s = compile_now(full_fn), compile_now(fn)
                full_times, times = time_interleaved([full_fn, fn], device, warmup, repeats)
                full_row = row(f"full resolution {sched.steps} steps", sched.steps, sched.steps, batch, full_times,
                               full_compile)
                this = row(label, sched.steps, sched.steps, batch, times, compile_s)
                this.ratio_to_full = this.seconds / full_row.seconds
                rows += [full_row, this]
            else:
                fn = run(sched)
                compile_s = compile_now(fn)
                rows.append(row(label, sched.steps, sched.steps, batch, time_call(fn, device, warmup, repeats),
                                compile_s))
    teacher = rows[0] if teacher_steps > 0 else None
    for r in rows:
        if teacher is not None:
            r.ratio_to_teacher = r.seconds / teacher.seconds
    return rows


def bench_settings(
    adapter,
    conditions: Callable[[int], tuple[TextCondition, TextCondition]],
    schedules: list[ScaleSchedule],
    device: torch.device,
    dtype: torch.dtype,
    batches: list[int] = (1,),
    threads: list[int] = (),
    modes: list[str] = ("eager",),
    **kwargs,
) -> list[LatencyRow]:
    """`bench_sampling` for every (threads, batch, mode): conditions(batch) -> (cond, uncond).

    CPU kernels compile for the thread count set at compile time, so the compiled graphs are
    dropped and rebuilt for each thread count; within one count they serve every batch size.
    The thread setting is restored afterwards.
    """
    from swd.models.compiled import CompiledAdapter, reset_compiled

    previous = torch.get_num_threads()
    rows: list[LatencyRow] = []
    try:
        for n_threads in (threads or [previous]):
            torch.set_num_threads(n_threads)
            compiled = None
            if "compiled" in modes:
                reset_compiled()
                compiled = CompiledAdapter(adapter, device)
            for batch in batches:
                cond, uncond = conditions(batch)
                for mode in modes:
                    rows += bench_sampling(compiled if mode == "compiled" else adapter, cond, uncond, schedules,
                                           device, dtype, **kwargs)
    finally:
        torch.set_num_threads(previous)
    return rows


def random_condition(arch_text_tokens: int, joint_dim: int, pooled_dim: int, batch: int, device, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, arch_text_tokens, joint_dim, generator=g).to(device, dtype)
    pooled = torch.randn(batch, pooled_dim, generator=g).to(device, dtype)
    return TextCondition(states, pooled), TextCondition(torch.zeros_like(states), torch.zeros_like(pooled))


def format_rows(rows: list[LatencyRow], title: str) -> str:
    lines = [title, f"{'run':<34} {'mode':<8} {'thr':>3} {'batch':>5} {'median s':>9} {'ms/image':>9} "
                    f"{'vs full-res':>11} {'vs teacher':>10} {'compile s':>9}"]
    for r in rows:
        full = f"{r.ratio_to_full:.3f}" if r.ratio_to_full is not None else "-"
        teach = f"{r.ratio_to_teacher:.4f}" if r.ratio_to_teacher is not None else "-"
        comp = f"{r.compile_seconds:.1f}" if r.compile_seconds is not None else "-"
        thr = str(r.threads) if r.threads is not None else "-"
        lines.append(f"{r.label:<34} {r.mode:<8} {thr:>3} {r.batch:>5} {r.seconds:>9.4f} {r.ms_per_image:>9.2f} "
                     f"{full:>11} {teach:>10} {comp:>9}")
    return "\n".join(lines)


def rows_to_dicts(rows: list[LatencyRow]) -> list[dict]:
    return [{**asdict(r), "ms_per_image": r.ms_per_image} for r in rows]
