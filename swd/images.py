"""Tensor <-> image helpers and labelled sample grids (PNG)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(
    images: torch.Tensor | np.ndarray,
    path: str | Path,
    ncol: int = 8,
    labels: list[str] | None = None,
    row_titles: list[str] | None = None,
    scale: int = 2,
    label_width: int = 22,
) -> Path:
    """Write a grid of images, optionally with a caption under each and a title per row."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images)
    n, h, w, _ = arr.shape
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    cw, ch = w * scale, h * scale
    font = ImageFont.load_default()
    label_lines = 3 if labels else 0
    line_h = 11
    title_w = 90 if row_titles else 0
    cell_h = ch + label_lines * line_h + (4 if labels else 0)
    canvas = Image.new("RGB", (title_w + ncol * (cw + 4) + 4, nrow * (cell_h + 4) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, ncol)
        x0, y0 = title_w + 4 + c * (cw + 4), 4 + r * (cell_h + 4)
        canvas.paste(Image.fromarray(arr[i]).resize((cw, ch), Image.NEAREST), (x0, y0))
        if labels:
            for k, line in enumerate(textwrap.wrap(labels[i], label_width)[:label_lines]):
                draw.text((x0, y0 + ch + 2 + k * line_h), line, fill="black", font=font)
    for r, title in enumerate(row_titles or []):
        for k, line in enumerate(textwrap.wrap(title, 14)[:4]):
            draw.text((4, 4 + r * (cell_h + 4) + ch // 2 - 10 + k * line_h), line, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def save_strip(images: torch.Tensor, path: str | Path, n: int = 8) -> Path:
    """The first `n` images (B, 3, H, W) in [-1, 1] side by side, unlabelled, as one PNG row
    (`swd report` stacks the strips of several runs into one comparison picture)."""
    row = np.concatenate(list(to_uint8(images[:n])), axis=1)  # (H, n*W, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(path)
    return path
