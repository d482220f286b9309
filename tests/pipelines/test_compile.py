"""The compiled fast path (`pipe.compile()`): same latents as eager, one graph per scale, compile time kept.

Tiny random SD3, FLUX and SDXL pipelines, two scales, so compilation stays within seconds on a CPU.
Tolerance: inductor reorders and fuses float32 arithmetic, so compiled and eager latents agree to
rounding, not bit for bit; 1e-4 absolute on latents of unit scale is ~1000x float32 epsilon and
far below any difference a wrong graph (a stale scale, a missed re-noise) would make (> 1e-1).
"""

import pytest
import torch

from swd.pipelines import SwDFluxPipeline, SwDStableDiffusion3Pipeline, SwDStableDiffusionXLPipeline
from swd.schedules import ScaleSchedule

from tests.pipelines import embeddings, flux_components, quiet, sd3_components, sdxl_components

TWO_SCALES = ScaleSchedule(scales=(8, 16), sigmas=(1.0, 0.7371), name="tiny-2")
ATOL = 1e-4


def _run(pipe, seed=0, **kwargs):
    # 6 text tokens, as `swd bench latency --arch tiny-*` uses: the same graphs, so inductor's
    # on-disk cache serves the GPU script's smoke test (tests/eval/test_gpu_latency_script.py).
    prompt_embeds, pooled = embeddings(1, tokens=6)
    return pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, schedule=TWO_SCALES,
                generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images


@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_compiled_pipeline_matches_eager_with_one_graph_per_scale(family):
    # The SDXL UNet takes the same widths: 16 (two 8-wide CLIPs' states) and pooled 8.
    cls, parts = {"sd3": (SwDStableDiffusion3Pipeline, sd3_components),
                  "flux": (SwDFluxPipeline, flux_components),
                  "sdxl": (SwDStableDiffusionXLPipeline, sdxl_components)}[family]
    pipe = quiet(cls(**parts(with_text=False)))
    eager = _run(pipe)
    other_seed = _run(pipe, seed=1)

    assert pipe.compile() is pipe
    compiled = _run(pipe)
    # Every scale of the schedule compiled once, at batch 1, and its first-call time was kept.
    assert sorted(pipe.compile_seconds) == ["1x16x16", "1x8x8"]
    assert all(s > 0 for s in pipe.compile_seconds.values())
    torch.testing.assert_close(compiled, eager, rtol=0, atol=ATOL)
    assert (other_seed - eager).abs().max() > 100 * ATOL  # the tolerance separates real differences

    # A second call reuses the graphs (no new shapes) and gives the same latents again.
    first_times = dict(pipe.compile_seconds)
    torch.testing.assert_close(_run(pipe), compiled, rtol=0, atol=0)
    assert pipe.compile_seconds == first_times

    pipe.compile(False)
    assert pipe.compile_seconds == {}
    torch.testing.assert_close(_run(pipe), eager, rtol=0, atol=0)


def test_compiled_adapter_keeps_the_adapter_interface():
    from swd.models import SD3Adapter
    from swd.models.compiled import CompiledAdapter, compile_mode

    adapter = SD3Adapter(sd3_components(with_text=False)["transformer"])
    wrapped = CompiledAdapter(adapter, "cpu")
    assert wrapped.latent_channels == adapter.latent_channels and wrapped.patch_size == adapter.patch_size
    assert wrapped.mode == "default" and not wrapped.captures_cuda_graphs
    assert compile_mode("cuda") == "reduce-overhead" and compile_mode("cpu") == "default"
