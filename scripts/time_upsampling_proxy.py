"""Which time upsampling of latent frames best predicts the latents of the longer clip?

A proxy for Wan's causal VAE in time: latent frame 0 is pixel frame 0, latent frame k >= 1 the
mean of pixel frames 4k-3..4k (what a causal x4 temporal compressor summarises). Moving-shapes
clips of 17 frames (5 latent frames) are also resampled to 9 frames (3 latent frames) in pixel
space (`resize_clip`, same duration), and to 13 frames (4 latent frames); each is upsampled back
to 5 latent frames by each `time_mode` and compared (MSE, pixel values in [-1, 1]) with the 5 latent frames of the full clip.

    python scripts/time_upsampling_proxy.py --n 256
"""

import argparse
import json

import torch

from swd.data.moving_shapes import generate_clips, render_clips
from swd.runtime import resize_clip
from swd.sampling import TIME_MODES, time_upsample_matrix


def causal_box_encode(clips: torch.Tensor) -> torch.Tensor:
    """(B, C, 4k + 1, H, W) -> (B, C, k + 1, H, W): frame 0 alone, then means of 4 frames."""
    first, rest = clips[:, :, :1], clips[:, :, 1:]
    b, c, f, h, w = rest.shape
    return torch.cat([first, rest.view(b, c, f // 4, 4, h, w).mean(3)], dim=2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=256)
    args = p.parse_args()
    samples = generate_clips(args.n, seed=7, frames=17)
    clips = torch.from_numpy(render_clips(samples)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    full = causal_box_encode(clips)  # (N, 3, 5, 32, 32)
    results = {}
    for pixel_frames, latent in ((9, 3), (13, 4)):
        short = causal_box_encode(resize_clip(clips, (pixel_frames, 32, 32)))  # (N, 3, latent, 32, 32)
        for mode in TIME_MODES:
            weights = time_upsample_matrix(latent, 5, mode).float()
            up = torch.einsum("st,bcthw->bcshw", weights, short)
            err = (up - full) ** 2
            results[f"{latent}->5 {mode}"] = {"mse": round(err.mean().item(), 5),
                                              "mse_other_frames": round(err[:, :, 1:].mean().item(), 5)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
