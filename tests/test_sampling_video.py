"""Spatio-temporal upsampling and scale-wise sampling of (B, C, F, H, W) video latents."""

import pytest
import torch
import torch.nn.functional as F

from swd.errors import SwdError
from swd.sampling import sample_scalewise, time_upsample_matrix, upsample_video
from swd.schedules import ScaleSchedule


def centres(frames):
    """Hand value: latent frame k >= 1 of a causal x4 VAE covers pixel frames 4k-3..4k (centre
    4k - 1.5) of a clip spanning 4 (F - 1) pixel frames; frame 0 is pixel frame 0."""
    return [0.0] + [(4 * k - 1.5) / (4 * (frames - 1)) for k in range(1, frames)]


def test_constant_clip_stays_constant():
    x = torch.full((1, 2, 1, 3, 5), 0.7).expand(1, 2, 6, 3, 5)
    for mode in ("linear", "nearest", "uniform"):
        up = upsample_video(x, (11, 6, 10), "bicubic", mode)
        assert up.shape == (1, 2, 11, 6, 10)
        assert torch.allclose(up, torch.full_like(up, 0.7), atol=1e-6)


def test_linear_ramp_in_time_reproduced_exactly():
    # Frames 1.. carry a ramp a + b * t at their time centres; frame 0 its own value.
    src, dst, a, b = 6, 11, 0.3, 2.0
    values = [5.0] + [a + b * t for t in centres(src)[1:]]
    x = torch.tensor(values, dtype=torch.float64).view(1, 1, src, 1, 1).expand(1, 1, src, 2, 2)
    up = upsample_video(x, (dst, 2, 2), "bicubic", "linear")
    expected = torch.tensor([5.0] + [a + b * t for t in centres(dst)[1:]], dtype=torch.float64)
    assert torch.allclose(up[0, 0, :, 0, 0], expected, atol=1e-12)


def test_first_frame_separate():
    w = time_upsample_matrix(6, 21, "linear")
    assert w[0].tolist() == [1.0] + [0.0] * 5          # frame 0 <- frame 0 alone
    assert torch.all(w[1:, 0] == 0)                     # frame 0 feeds no later frame
    assert torch.allclose(w.sum(1), torch.ones(21, dtype=w.dtype))
    # a perturbed first frame changes only the first output frame
    x = torch.randn(1, 2, 6, 4, 4)
    y = x.clone()
    y[:, :, 0] += 10
    dx = upsample_video(y, (21, 8, 8)) - upsample_video(x, (21, 8, 8))
    assert dx[:, :, 1:].abs().max() == 0 and dx[:, :, 0].abs().min() > 1


def test_time_matrices_by_hand():
    # 2 -> 3 latent frames: frame 2 of the target sits at centre (8 - 1.5) / 8 = 0.8125 of the clip;
    # the source has one later frame (centre 2.5 / 4 = 0.625), so frames 1 and 2 copy it.
    assert time_upsample_matrix(2, 3, "linear").tolist() == [[1, 0], [0, 1], [0, 1]]
    # 3 -> 5: target centres 2.5/16, 6.5/16, 10.5/16, 14.5/16; source 2.5/8, 6.5/8 (spacing 0.5)
    w = time_upsample_matrix(3, 5, "linear")
    src = centres(3)[1:]
    for j, t in enumerate(centres(5)[1:], start=1):
        frac = (t - src[0]) / (src[1] - src[0])
        assert w[j].tolist() == pytest.approx([0.0, 1 - frac, frac])
    assert time_upsample_matrix(3, 5, "nearest").tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]
    # uniform: evenly spaced samples, ends aligned, the same as F.interpolate(align_corners=True)
    x = torch.randn(1, 3, 4)
    ref = F.interpolate(x, size=7, mode="linear", align_corners=True)
    ours = torch.einsum("st,bct->bcs", time_upsample_matrix(4, 7, "uniform").float(), x)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.equal(time_upsample_matrix(5, 5, "linear"), torch.eye(5, dtype=torch.float64))


def test_space_is_bicubic_per_frame():
    x = torch.randn(2, 3, 4, 5, 6)
    up = upsample_video(x, (4, 10, 12), "bicubic")
    for f in range(4):
        ref = F.interpolate(x[:, :, f], size=(10, 12), mode="bicubic", align_corners=False)
        assert torch.allclose(up[:, :, f], ref, atol=1e-6)


def test_video_sampler_shapes_and_hand_step():
    schedule = ScaleSchedule(scales=[(2, 4, 6), (3, 6, 8), (5, 8, 12)], sigmas=[1.0, 0.8, 0.5])
    seen = []

    def denoiser(x, sigma):
        seen.append(tuple(x.shape))
        return torch.zeros_like(x)  # v = 0: x0 = x

    gen = torch.Generator().manual_seed(0)
    out = sample_scalewise(denoiser, schedule, 2, 4, generator=gen)
    assert seen == [(2, 4, 2, 4, 6), (2, 4, 3, 6, 8), (2, 4, 5, 8, 12)]
    # by hand with the same noise stream: x0 = noise, then up + noise at each step
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 2, 4, 6, generator=gen)
    for size, sigma in zip(schedule.scales[1:], schedule.sigmas[1:]):
        up = upsample_video(x, size)
        x = (1 - sigma) * up + sigma * torch.randn(up.shape, generator=gen)
    assert torch.allclose(out, x, atol=1e-6)


def test_video_sampler_bad_time_mode():
    schedule = ScaleSchedule(scales=[(2, 4, 4)], sigmas=[1.0])
    with pytest.raises(SwdError, match="time_mode"):
        sample_scalewise(lambda x, s: x, schedule, 1, 1, time_mode="cubic")
