"""swd: scale-wise distillation of diffusion models (SwD, ICLR 2026)."""

__version__ = "0.1.0"
