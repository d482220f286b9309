"""One captured CUDA graph per input shape of a model adapter.

Few-step samplers at low resolution are launch-bound in eager mode (TESTBED.md: SwD on SD3.5-L
was 0.97x of 4 full-resolution steps eagerly, 0.58x with graphs). `CudaGraphAdapter` keeps, per
(latent shape, text shape), static input buffers and a graph captured on them; a call copies the
inputs in and replays. The prompt is an input too, so one capture serves every prompt of that
shape, across pipeline calls.
"""

from __future__ import annotations

import torch

from swd.errors import SwdError
from swd.models.base import TextCondition


class CudaGraphAdapter:
    def __init__(self, adapter, warmup: int = 2):
        if not torch.cuda.is_available():
            raise SwdError("cuda_graphs: CUDA graphs need a CUDA device")
        self.adapter = adapter
        self.warmup = warmup
        self._graphs: dict = {}

    def __getattr__(self, name):  # latent_channels, patch_size, dtype, ... of the wrapped adapter
        return getattr(self.adapter, name)

    def _capture(self, x, sigma, cond: TextCondition):
        static = (x.clone(), sigma.clone(), cond.prompt_embeds.clone(), cond.pooled.clone())

        def run():
            return self.adapter(static[0], static[1], TextCondition(static[2], static[3]))

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        return graph, static, out

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        cond = cond.expand_to(x.shape[0])
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0]).contiguous()
        key = (tuple(x.shape), x.dtype, tuple(cond.prompt_embeds.shape), tuple(cond.pooled.shape))
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, sigma, cond)
        graph, static, out = self._graphs[key]
        for buf, value in zip(static, (x, sigma, cond.prompt_embeds, cond.pooled)):
            buf.copy_(value)
        graph.replay()
        return out  # valid until the next call with this shape; the samplers use it at once
