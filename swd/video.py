"""Writing video frames: GIF through Pillow; MP4 only where imageio with its ffmpeg plugin is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from swd.errors import SwdError


def frames_to_pil(frames) -> list[Image.Image]:
    """A list of PIL images, or an array (F, H, W, 3) of floats in [0, 1] or uint8, as PIL frames."""
    if isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Image.Image) for f in frames):
        return list(frames)
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise SwdError(f"frames: expected PIL images or an (F, H, W, 3) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    return [Image.fromarray(f) for f in arr]


def mp4_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("imageio", "imageio_ffmpeg"))


def save_video(frames, path: str | Path, fps: int = 16) -> Path:
    """Write frames to `path`: .gif (Pillow, looping) or .mp4 (imageio + ffmpeg, when installed)."""
    path = Path(path)
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise SwdError(f"fps: expected a positive int, got {fps!r}")
    pil = frames_to_pil(frames)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        # GIF stores durations in 10 ms units; Pillow rounds 1000 / fps for us.
        pil[0].save(path, save_all=True, append_images=pil[1:], duration=round(1000 / fps), loop=0)
        return path
    if suffix == ".mp4":
        if not mp4_available():
            raise SwdError(f"{path}: writing MP4 needs the packages imageio and imageio-ffmpeg; write a .gif instead")
        from diffusers.utils import export_to_video

        export_to_video(pil, str(path), fps=fps)
        return path
    raise SwdError(f"{path}: unknown video format {suffix or '(none)'}; use .gif or .mp4")


def read_gif(path: str | Path) -> np.ndarray:
    """The frames of a GIF as (F, H, W, 3) uint8 (for tests and docs)."""
    with Image.open(path) as im:
        frames = []
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames)
