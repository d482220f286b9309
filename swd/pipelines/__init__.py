"""diffusers pipelines that sample scale-wise with an SwD student (SD3 / SD3.5 and FLUX)."""

from swd.pipelines.flux import SwDFluxPipeline
from swd.pipelines.sd3 import SwDStableDiffusion3Pipeline

__all__ = ["SwDFluxPipeline", "SwDStableDiffusion3Pipeline"]
