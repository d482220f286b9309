"""The fast path: a model adapter run through `torch.compile`, one static graph per input shape.

Few-step samplers at low resolution are overhead-bound in eager mode: every operator pays its
dispatch (CPU) or launch (GPU) cost whatever the tensor size, so a 16 px step costs nearly what a
32 px one does and SwD's saving disappears (docs/RESULTS.md, "CPU latency"). Compiling with
`dynamic=False` gives one specialised graph per latent size; on CUDA, `mode="reduce-overhead"`
also captures each graph as a CUDA graph (torch's own capture, with its memory pool and
warm-up), so a step costs its compute.

`CompiledAdapter` wraps any adapter (SD3, FLUX, UNet) and keeps its interface. The first call at
a new shape compiles; its wall time is kept in `compile_seconds`, so callers report compilation
apart from per-image time. `warm_up` runs a sampler once per shape it will meet.

CPU kernels are specialised on `torch.get_num_threads()` at compile time (inductor), so compile
after choosing the thread count; `swd.models.compiled.reset_compiled()` drops every compiled
graph before compiling again with another count.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from swd.models.base import TextCondition

# Distinct shapes one process may compile per adapter class: scales x batch sizes (CFG doubles
# the batch) x eager/teacher use. torch's default (8) is below a 6-scale schedule with CFG.
RECOMPILE_LIMIT = 64


def compile_mode(device) -> str:
    """'reduce-overhead' (CUDA graphs through torch.compile) on CUDA; inductor's default elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


def reset_compiled() -> None:
    """Forget every compiled graph in this process (e.g. before compiling for another thread count)."""
    torch._dynamo.reset()


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CompiledAdapter:
    """`adapter(x, sigma, cond) -> velocity`, compiled with one static graph per input shape.

    mode: torch.compile's mode; default `compile_mode(device)`. With CUDA graphs
    ('reduce-overhead') each call marks a new step for torch's graph trees and returns a copy
    of the output, which the next replay would overwrite.
    """

    def __init__(self, adapter, device=None, mode: Optional[str] = None):
        _raise_recompile_limit()
        self.adapter = adapter
        if device is None:
            device = next(adapter.parameters()).device
        self.device = torch.device(device)
        self.mode = mode or compile_mode(self.device)
        self._compiled = torch.compile(adapter, dynamic=False, mode=self.mode)
        self.compile_seconds: dict[tuple, float] = {}  # input shape key -> wall s of its first call

    def __getattr__(self, name):  # latent_channels, patch_size, dtype, config, ... of the wrapped adapter
        if name == "adapter":
            raise AttributeError(name)
        return getattr(self.adapter, name)

    @property
    def captures_cuda_graphs(self) -> bool:
        return self.mode in ("reduce-overhead", "max-autotune")

    @staticmethod
    def shape_key(x: torch.Tensor, cond: TextCondition) -> tuple:
        return (tuple(x.shape), x.dtype, tuple(cond.prompt_embeds.shape), tuple(cond.pooled.shape))

    def __call__(self, x: torch.Tensor, sigma, cond: TextCondition) -> torch.Tensor:
        if self.captures_cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        key = self.shape_key(x, cond)
        first = key not in self.compile_seconds
        if first:
            _synchronize(self.device)
            start = time.perf_counter()
        out = self._compiled(x, sigma, cond)
        if first:
            _synchronize(self.device)
            self.compile_seconds[key] = time.perf_counter() - start
        return out.clone() if self.captures_cuda_graphs else out

    def total_compile_seconds(self) -> float:
        return sum(self.compile_seconds.values())


def warm_up(run: Callable[[], object], device, calls: Optional[int] = None) -> float:
    """Call a sampling run `calls` times (default: 3 on CUDA, where torch's graph trees warm up,
    record, then replay; 1 elsewhere) so every shape it meets is compiled; returns wall seconds."""
    device = torch.device(device)
    calls = calls if calls is not None else (3 if device.type == "cuda" else 1)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    _synchronize(device)
    return time.perf_counter() - start


def compile_seconds_by_size(compiled: CompiledAdapter) -> dict[str, float]:
    """First-call seconds per latent size and batch, e.g. {'1x16x16': 12.3}, for reports."""
    out: dict[str, float] = {}
    for (shape, _dtype, _text, _pooled), seconds in compiled.compile_seconds.items():
        label = f"{shape[0]}x{shape[-2]}x{shape[-1]}"
        out[label] = out.get(label, 0.0) + seconds
    return out
