"""Runtime helpers every layer may use: the device, autocast, EMA and area resizing.

The ground floor: imports only torch and `swd.errors`, so data, models, training, evaluation and
commands can all lean on it without pointing an import upwards.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from swd.errors import SwdError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SwdError(f"device: {name} requested but no CUDA device is available")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; full precision otherwise (CPU bf16 autocast is slow)."""
    if precision not in ("bf16", "fp32"):
        raise SwdError(f"precision: must be bf16 or fp32, got {precision!r}")
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """`ema <- decay * ema + (1 - decay) * model` for the model's trainable parameters.

    `ema` has the model's structure (a deep copy); frozen parameters, such as a LoRA model's base
    weights shared with the EMA copy, are the same in both and are skipped.
    """
    for e, p in zip(ema.parameters(), model.parameters()):
        if p.requires_grad:
            e.lerp_(p.detach(), 1.0 - decay)


def resize_clip(clips: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Downscale clips (B, 3, F, H, W) to (frames, h, w) in pixel space: area in space per frame,
    and in time the frames at times j (F - 1) / (frames - 1) of the original, linearly between
    neighbours. A lower-frame-rate clip of the same duration: 81 -> 21 frames takes every 4th
    frame exactly (no motion blur from averaging)."""
    frames, h, w = (int(v) for v in size)
    if clips.shape[2] != frames:
        b, c, f = clips.shape[:3]
        pos = torch.arange(frames, dtype=torch.float64) * ((f - 1) / (frames - 1) if frames > 1 else 0.0)
        lo = pos.floor().long().clamp(max=f - 1)
        hi = (lo + 1).clamp(max=f - 1)
        frac = (pos - lo).to(clips.dtype).view(1, 1, -1, 1, 1).to(clips.device)
        clips = clips[:, :, lo] * (1 - frac) + clips[:, :, hi] * frac
    if tuple(clips.shape[-2:]) != (h, w):
        b, c, f = clips.shape[:3]
        per_frame = clips.permute(0, 2, 1, 3, 4).reshape(b * f, c, *clips.shape[-2:])
        clips = resize_area(per_frame, (h, w)).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
    return clips.contiguous()


def resize_area(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Area (box-filter) downscaling to `size` (a side, or (h, w)), the paper's choice for building
    lower-scale targets; a no-op at the same size."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="area")
