"""Forward processes: how a model's noisy input is made and how its output gives the clean x0.

`FLOW` is rectified flow (SD3, FLUX, the testbed): x = (1 - sigma) x0 + sigma eps, the model
predicts velocity. `DDPMProcess` is the variance-preserving process of noise-prediction UNets
(SD1.5, SDXL), with epsilon or v prediction. Samplers and losses call `process.add_noise` and
`process.x0`; adapters call `process.timestep` for the model's timestep input.
"""

from __future__ import annotations

import torch

from swd.errors import SwdError


class FlowProcess:
    """Rectified flow: x = (1 - sigma) x0 + sigma eps, the model predicts v ~ eps - x0."""

    name = "flow"

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's timestep input: 1000 sigma (SD3/FLUX convention)."""
        return sigma * 1000.0

    def add_noise(self, x0: torch.Tensor, sigma, eps: torch.Tensor) -> torch.Tensor:
        """x = (1 - sigma) x0 + sigma eps; sigma a number or (B,)."""
        sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
        if sigma.ndim == 1:
            sigma = sigma.view(-1, *([1] * (x0.ndim - 1)))
        return (1 - sigma) * x0 + sigma * eps

    def x0(self, x: torch.Tensor, sigma, prediction: torch.Tensor) -> torch.Tensor:
        """x0 = x - sigma v (sigma a number or (B,))."""
        if isinstance(sigma, (int, float)):
            return x - sigma * prediction  # a Python number stays one (no rounding to x's dtype)
        sigma = torch.as_tensor(sigma, device=x.device)  # a tensor keeps its dtype (float32 sigmas)
        if sigma.ndim == 1:
            sigma = sigma.view(-1, *([1] * (x.ndim - 1)))
        return x - sigma * prediction


FLOW = FlowProcess()
DDPM_PREDICTIONS = ("epsilon", "v_prediction")


class DDPMProcess:
    """DDPM (variance preserving): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    sigma in [0, 1] maps to the integer timestep t = round(sigma * T) clamped to T - 1, T the number
    of train timesteps (the authors' SDXL call passes timesteps = 1000 sigma, so sigma 1 -> 999). The
    model predicts eps ("epsilon") or v = sqrt(abar) eps - sqrt(1 - abar) x0 ("v_prediction").
    """

    name = "ddpm"

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "epsilon"):
        if prediction not in DDPM_PREDICTIONS:
            raise SwdError(f"prediction_type: {prediction!r} is not supported; choose one of {', '.join(DDPM_PREDICTIONS)}")
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        self.prediction = prediction

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def timestep(self, sigma) -> torch.Tensor:
        """Integer timesteps (as float, the UNet's input) for noise levels sigma."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (sigma * self.num_train_timesteps).round().clamp(0, self.num_train_timesteps - 1).float()

    def _scales(self, sigma, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar), sqrt(1 - abar)) at sigma, shaped to broadcast against `like`."""
        index = self.timestep(sigma).long()
        abar = self.alphas_cumprod[index].to(like.device)
        if abar.ndim == 1:
            abar = abar.view(-1, *([1] * (like.ndim - 1)))
        return abar.sqrt().to(like.dtype), (1 - abar).sqrt().to(like.dtype)

    def add_noise(self, x0: torch.Tensor, sigma, eps: torch.Tensor) -> torch.Tensor:
        a, b = self._scales(sigma, x0)
        return a * x0 + b * eps

    def x0(self, x: torch.Tensor, sigma, prediction: torch.Tensor) -> torch.Tensor:
        a, b = self._scales(sigma, x)
        if self.prediction == "epsilon":
            return (x - b * prediction) / a
        return a * x - b * prediction


def process_from_scheduler_config(config) -> FlowProcess | DDPMProcess:
    """The forward process a diffusers scheduler config describes: flow for FlowMatch* schedulers,
    else DDPM with the config's betas and prediction_type (alphas from diffusers' own DDPMScheduler)."""
    config = dict(config)
    if "FlowMatch" in str(config.get("_class_name", "")) or "shift" in config and "beta_schedule" not in config:
        return FLOW
    from diffusers import DDPMScheduler

    prediction = config.get("prediction_type", "epsilon")
    known = {k: v for k, v in config.items() if not k.startswith("_")}
    scheduler = DDPMScheduler.from_config(known)
    return DDPMProcess(scheduler.alphas_cumprod, prediction)


def sdxl_process(prediction: str = "epsilon") -> DDPMProcess:
    """SDXL's (and SD1.5's) DDPM: 1000 steps, scaled_linear betas 0.00085 -> 0.012."""
    return process_from_scheduler_config(
        {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "prediction_type": prediction}
    )
