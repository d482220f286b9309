"""Samplers: small pure functions over a denoiser that returns velocity.

A denoiser is any callable `denoiser(x, sigma) -> v` with x of shape (B, C, H, W) (video:
(B, C, F, H, W), F latent frames of a causal video VAE), sigma of
shape (B,) and v ~ eps - x0 (flow matching, SD3/FLUX convention: x_sigma = (1 - sigma) x0 +
sigma eps). Bind the prompt with `conditioned` or `guided` (classifier-free guidance).

Noise-prediction UNets (SD1.5, SDXL) use another forward process: `swd.processes.DDPMProcess`
gives it and the clean estimate from an epsilon or v prediction; the scale-wise sampler takes it
as `process=` (rectified flow, `FLOW`, by default). There sigma is the DDPM timestep over the
number of train timesteps, as in the authors' SDXL call (`timesteps = 1000 * sigmas`).

Noise is drawn from an explicit torch.Generator on the CPU and then moved to the device, so a
seed gives the same samples on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F

from swd.errors import SwdError
from swd.models.base import TextCondition
# FLOW is the default process; the others are re-exported so samplers and their processes import together.
from swd.processes import FLOW, DDPMProcess, process_from_scheduler_config, sdxl_process  # noqa: F401
from swd.schedules import ScaleSchedule, flow_sigmas

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[..., None]

UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")
# Upsampling video latents in time (`time_upsample_matrix`): "linear" and "nearest" respect the
# causal VAE (first latent frame apart, the others placed at the centre of the 4 pixel frames
# each encodes); "uniform" treats all latent frames as evenly spaced samples (the ablation).
TIME_MODES = ("linear", "nearest", "uniform")
# "upsample_then_noise" is the method; the other order exists only for the ablation
# (SWD_SPEC section 3: noising before upsampling was measured catastrophic).
ORDERS = ("upsample_then_noise", "noise_then_upsample")


def make_generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SwdError(f"seed: expected a non-negative integer, got {seed!r}")
    return torch.Generator("cpu").manual_seed(seed)


def randn(shape, generator: Optional[torch.Generator], device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved (device-independent seeds)."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


def upsample(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize (B, C, H, W) latents to `size`; a no-op at the same size."""
    if mode not in UPSAMPLE_MODES:
        raise SwdError(f"upsample_mode: unknown {mode!r}; choose one of {', '.join(UPSAMPLE_MODES)}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    extra = {"align_corners": False} if mode in ("bicubic", "bilinear") else {}
    return F.interpolate(x, size=tuple(size), mode=mode, **extra)


def _latent_frame_positions(frames: int) -> torch.Tensor:
    """Where latent frames 1..F-1 sit in time, in units of the latent frame spacing.

    A causal VAE's latent frame k >= 1 encodes pixel frames 4k-3..4k, centred at 4k - 1.5; the
    whole clip spans pixel frames 0..4(F-1). Measured in latent spacings of 4 pixel frames and
    rescaled to the clip length, frame k sits at k - 0.375 (frame 0, one pixel frame, at 0).
    """
    return torch.arange(1, frames, dtype=torch.float64) - 0.375


def time_upsample_matrix(src: int, dst: int, mode: str = "linear") -> torch.Tensor:
    """Weights W (dst, src): latent frame j of the upsampled clip is sum_k W[j, k] * frame k.

    Clips keep their duration: a clip of F latent frames spans 4 (F - 1) pixel frames, so time
    t in [0, 1] of one clip is time t of the other.
    "linear" / "nearest": frame 0 (one pixel frame, an image latent) maps to frame 0 alone and
        feeds no other frame; frames 1.. interpolate frames 1.. of the source at their time
        centres, linearly (extrapolating the end interval by at most half a frame, so a ramp in
        time stays exact) or from the nearest one. A source without frames beyond the first
        has nothing else to offer: every frame copies frame 0.
    "uniform": every latent frame an evenly spaced sample, first and last aligned (ablation:
        mixes the image latent into its neighbours).
    """
    if mode not in TIME_MODES:
        raise SwdError(f"time_mode: unknown {mode!r}; choose one of {', '.join(TIME_MODES)}")
    if src < 1 or dst < 1:
        raise SwdError(f"frames: latent frame counts must be >= 1, got {src} -> {dst}")
    weights = torch.zeros(dst, src, dtype=torch.float64)
    if mode == "uniform":
        pos = torch.arange(dst, dtype=torch.float64) * ((src - 1) / (dst - 1) if dst > 1 else 0.0)
        lo = pos.floor().long().clamp(max=max(src - 2, 0))
        frac = pos - lo
        weights[torch.arange(dst), lo] += 1 - frac
        if src > 1:
            weights[torch.arange(dst), lo + 1] += frac
        return weights
    weights[0, 0] = 1.0
    if dst == 1:
        return weights
    if src == 1:
        weights[1:, 0] = 1.0
        return weights
    # Target frame centres expressed in the source's latent-frame units (time scaled by duration).
    centre = _latent_frame_positions(dst) * (src - 1) / (dst - 1) + 0.375
    rows = torch.arange(1, dst)
    if mode == "nearest":
        weights[rows, centre.round().long().clamp(1, src - 1)] = 1.0
        return weights
    if src == 2:
        weights[rows, 1] = 1.0
        return weights
    lo = centre.floor().long().clamp(1, src - 2)
    frac = centre - lo
    weights[rows, lo] = 1 - frac
    weights[rows, lo + 1] = frac
    return weights


def upsample_video(x: torch.Tensor, size, mode: str = "bicubic", time_mode: str = "linear") -> torch.Tensor:
    """Resize (B, C, F, H, W) latents to (frames, h, w): in time by `time_upsample_matrix`, then each
    frame in space with `mode` (the two are separable linear maps, so their order does not matter)."""
    frames, h, w = (int(v) for v in size)
    if tuple(x.shape[2:]) == (frames, h, w):
        return x
    if x.shape[2] != frames:
        weights = time_upsample_matrix(x.shape[2], frames, time_mode).to(x.device, x.dtype)
        x = torch.einsum("st,bcthw->bcshw", weights, x)
    if tuple(x.shape[-2:]) != (h, w):
        b, c, f = x.shape[:3]
        per_frame = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, *x.shape[-2:])  # (B F, C, H, W)
        per_frame = upsample(per_frame, (h, w), mode)
        x = per_frame.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
    return x.contiguous()


def add_noise(x0: torch.Tensor, sigma, eps: torch.Tensor) -> torch.Tensor:
    """Forward process x_sigma = (1 - sigma) x0 + sigma eps; sigma a number or (B,)."""
    return FLOW.add_noise(x0, sigma, eps)


def conditioned(model, cond: TextCondition) -> Denoiser:
    """Bind a prompt to a model adapter: (x, sigma) -> v."""

    def denoiser(x, sigma):
        return model(x, sigma, cond)

    return denoiser


def guided(model, cond: TextCondition, uncond: TextCondition, scale: float) -> Denoiser:
    """Classifier-free guidance: v = v_uncond + scale * (v_cond - v_uncond), one batched forward."""
    if scale == 1.0:
        return conditioned(model, cond)

    def denoiser(x, sigma):
        b = x.shape[0]
        both = TextCondition.cat([uncond.expand_to(b), cond.expand_to(b)])
        v = model(torch.cat([x, x]), torch.cat([sigma, sigma]), both)
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return denoiser


def sample_scalewise(
    denoiser: Denoiser,
    schedule: ScaleSchedule,
    batch_size: int,
    channels: int,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype=torch.float32,
    upsample_mode: str = "bicubic",
    order: Literal["upsample_then_noise", "noise_then_upsample"] = "upsample_then_noise",
    noise: Optional[torch.Tensor] = None,
    callback: Optional[Callback] = None,
    process=None,
    time_mode: str = "linear",
) -> torch.Tensor:
    """Scale-wise few-step sampling (SWD_SPEC section 3); returns x0 at the final scale.

    Step i: v = G(x, sigma_i); x0 = x - sigma_i v. Between steps, x0 is upsampled to the next
    scale and re-noised with fresh noise to sigma_{i+1}. With a constant scale this is the
    ordinary full-resolution few-step (DMD2-style) sampler. `process` (default FLOW) gives the
    clean estimate and the re-noising; a DDPMProcess makes this the LCM-style multistep sampler
    of a noise-prediction model.
    A video schedule ((frames, h, w) scales) samples (B, C, F, H, W) latents, upsampled by
    `upsample_video` with `time_mode`.
    """
    process = FLOW if process is None else process
    if order not in ORDERS:
        raise SwdError(f"order: unknown {order!r}; choose one of {', '.join(ORDERS)}")
    if upsample_mode not in UPSAMPLE_MODES:
        raise SwdError(f"upsample_mode: unknown {upsample_mode!r}; choose one of {', '.join(UPSAMPLE_MODES)}")
    if time_mode not in TIME_MODES:
        raise SwdError(f"time_mode: unknown {time_mode!r}; choose one of {', '.join(TIME_MODES)}")
    shape = (batch_size, channels, *schedule.scales[0])
    if noise is None:
        noise = randn(shape, generator, device, dtype)
    elif tuple(noise.shape) != shape:
        raise SwdError(f"noise: expected shape {shape}, got {tuple(noise.shape)}")

    def resize(z, size):
        return upsample_video(z, size, upsample_mode, time_mode) if z.ndim == 5 else upsample(z, size, upsample_mode)

    # At sigma = 1 the input is pure noise; a schedule that starts lower still starts from noise,
    # as the first step has no clean estimate to mix in.
    x = noise.to(device, dtype)
    for i, sigma in enumerate(schedule.sigmas):
        sigma_vec = torch.full((batch_size,), sigma, device=x.device, dtype=torch.float32)
        v = denoiser(x, sigma_vec)
        x0 = process.x0(x, sigma, v)
        if callback is not None:
            callback(step=i, x=x, sigma=sigma, x0=x0)
        if i == schedule.steps - 1:
            return x0
        next_size, next_sigma = schedule.scales[i + 1], schedule.sigmas[i + 1]
        if order == "upsample_then_noise":
            x0_up = resize(x0, next_size)
            eps = randn(x0_up.shape, generator, x0_up.device, x0_up.dtype)
            x = process.add_noise(x0_up, next_sigma, eps)
        else:
            eps = randn(x0.shape, generator, x0.device, x0.dtype)
            x = resize(process.add_noise(x0, next_sigma, eps), next_size)
    raise AssertionError("unreachable: a schedule has at least one step")


def sample_fewstep(denoiser: Denoiser, schedule: ScaleSchedule, batch_size: int, channels: int, **kwargs) -> torch.Tensor:
    """Full-resolution few-step sampling: the schedule's sigmas, all at its final scale."""
    return sample_scalewise(denoiser, schedule.at_full_resolution(), batch_size, channels, **kwargs)


def sample_euler(
    denoiser: Denoiser,
    sigmas: list[float] | torch.Tensor,
    x: torch.Tensor,
    callback: Optional[Callback] = None,
) -> torch.Tensor:
    """Deterministic Euler integration of the flow ODE along `sigmas` (ending at 0).

    x_{k+1} = x_k + (sigma_{k+1} - sigma_k) v(x_k, sigma_k): the teacher's sampler.
    """
    sigmas = [float(s) for s in sigmas]
    for k in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        v = denoiser(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32))
        if callback is not None:
            callback(step=k, x=x, sigma=sigma, x0=FLOW.x0(x, sigma, v))
        x = x + (sigma_next - sigma) * v
    return x


def sample_teacher(
    denoiser: Denoiser,
    size: tuple[int, int],
    batch_size: int,
    channels: int,
    steps: int = 28,
    shift: float = 3.0,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype=torch.float32,
    callback: Optional[Callback] = None,
) -> torch.Tensor:
    """The teacher's multistep Euler sampler on the shifted flow grid (pair with `guided`)."""
    noise = randn((batch_size, channels, *size), generator, device, dtype)
    return sample_euler(denoiser, flow_sigmas(steps, shift), noise, callback=callback)


@dataclass(frozen=True)
class TeacherSampler:
    """The teacher's sampler as a spec: `steps` Euler steps on the shift-`shift` flow grid, CFG `guidance`.

    With `sample`, a spec is this or a ScaleSchedule (scale-wise steps, no CFG): the one way
    callers say which sampler they want.
    """

    steps: int = 28
    guidance: float = 4.5
    shift: float = 3.0


def sample(adapter, spec: TeacherSampler | ScaleSchedule, cond: TextCondition, uncond: TextCondition | None = None,
           generator: Optional[torch.Generator] = None, device=None, size: tuple[int, int] | None = None,
           **kwargs) -> torch.Tensor:
    """x0 (B, C, H, W) of an adapter's samples for the prompts `cond` with the sampler `spec`.

    TeacherSampler: Euler + CFG (`uncond` the unconditional prompt) at `size` (default the
    model's sample size). ScaleSchedule: `sample_scalewise` with the adapter's forward process.
    Other keyword arguments (callback, dtype, time_mode, ...) go to the sampler.
    """
    batch = cond.batch_size
    if isinstance(spec, TeacherSampler):
        size = size or (adapter.config.sample_size,) * 2
        return sample_teacher(guided(adapter, cond, uncond, spec.guidance), size, batch, adapter.latent_channels,
                              steps=spec.steps, shift=spec.shift, generator=generator, device=device, **kwargs)
    return sample_scalewise(conditioned(adapter, cond), spec, batch, adapter.latent_channels, generator=generator,
                            device=device, process=getattr(adapter, "process", None), **kwargs)
