"""diffusers pipelines that sample scale-wise with an SwD student (SD3 / SD3.5, FLUX, SDXL and Wan2.1 video)."""

from swd.pipelines.flux import SwDFluxPipeline
from swd.pipelines.sd3 import SwDStableDiffusion3Pipeline
from swd.pipelines.sdxl import SwDStableDiffusionXLPipeline
from swd.pipelines.wan import SwDWanPipeline

__all__ = ["SwDFluxPipeline", "SwDStableDiffusion3Pipeline", "SwDStableDiffusionXLPipeline", "SwDWanPipeline"]
