"""The space a model denoises in: pixels (the testbed) or a frozen VAE's latents (SD3, FLUX; Wan2.1's
causal video VAE in `VideoVaeSpace`).

SWD_SPEC section 4, step 1: real images are area-downscaled in PIXEL space to the pixel size of
a scale and only then encoded, so the target at every scale is the encoding of a real
low-resolution image (not a resized latent). A scale's pixel size is its latent size times the
VAE's downsampling factor, `2 ** (len(vae.config.block_out_channels) - 1)` (8 for SD3 and FLUX).

    space = VaeSpace(vae, device)            # or PixelSpace() for pixel-space models
    z = space.encode(images)                 # (B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f)
    x = space.decode(z)                      # and back, for sample grids
"""

from __future__ import annotations

import torch

from swd.errors import SwdError


class PixelSpace:
    """Pixel-space models: the identity, one pixel per latent pixel."""

    downsample = 1
    channels = 3
    time_mode = "uniform"  # pixel clips: every frame one sample in time (no causal first frame)

    def pixel_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class _FrozenVae:
    """A diffusers VAE moved to a device and dtype, in eval mode, without gradients; `chunk`: images
    (or clips) per encode/decode call, which bounds the VAE's transient memory."""

    def __init__(self, vae, device, dtype: torch.dtype | None, chunk: int):
        # nn.Module.to: diffusers' own .to only adds a warning about fp32-kept modules (the VAE has none).
        self.vae = torch.nn.Module.to(vae, device=device, dtype=dtype).eval().requires_grad_(False)
        self.chunk = chunk

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype


class VaeSpace(_FrozenVae):
    """A frozen diffusers AutoencoderKL: `encode` gives `(mean - shift_factor) * scaling_factor`.

    The posterior mean is used (not a sample): it is deterministic, and the SD3/FLUX VAEs'
    posterior std is tiny next to the diffusion noise added on top. Images are encoded in chunks
    of `chunk` to bound the VAE's transient memory at 1024 px.
    """

    def __init__(self, vae, device=None, dtype: torch.dtype | None = None, chunk: int = 4):
        super().__init__(vae, device, dtype, chunk)
        config = vae.config
        self.scaling = float(config.scaling_factor)
        self.shift = float(getattr(config, "shift_factor", None) or 0.0)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.channels = int(config.latent_channels)

    def pixel_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return (size[0] * self.downsample, size[1] * self.downsample)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> float32 latents (B, C, H/f, W/f) on the VAE's device."""
        out = []
        for part in images.split(self.chunk):
            dist = self.vae.encode(part.to(self.device, self.dtype), return_dict=False)[0]
            out.append((dist.mode().float() - self.shift) * self.scaling)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of encode: float32 images (B, 3, H, W), roughly in [-1, 1]."""
        out = []
        for part in latents.split(self.chunk):
            z = part.to(self.device, self.dtype) / self.scaling + self.shift
            out.append(self.vae.decode(z, return_dict=False)[0].float())
        return torch.cat(out)


class VideoVaeSpace(_FrozenVae):
    """A frozen diffusers AutoencoderKLWan (causal, x4 in time, x8 in space): `encode` gives the
    latents Wan's transformer sees, `(mean - latents_mean) / latents_std` per channel.

    Clips are (B, 3, F, H, W) in [-1, 1] with F = 4k + 1 pixel frames -> (B, C, k + 1, H/8, W/8).
    """

    time_mode = "linear"  # `swd.sampling.time_upsample_matrix`: the first latent frame apart

    def __init__(self, vae, device=None, dtype: torch.dtype | None = None, chunk: int = 2):
        super().__init__(vae, device, dtype, chunk)
        config = vae.config
        self.channels = int(config.z_dim)
        self.downsample = int(config.scale_factor_spatial)
        self.temporal = int(config.scale_factor_temporal)
        shape = (1, self.channels, 1, 1, 1)
        self.mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape)
        self.std = torch.tensor(config.latents_std, dtype=torch.float32).view(shape)

    def pixel_size(self, size: tuple[int, int, int]) -> tuple[int, int, int]:
        """(latent frames, h, w) -> (4 (frames - 1) + 1, 8 h, 8 w)."""
        frames, h, w = size
        return (self.temporal * (frames - 1) + 1, h * self.downsample, w * self.downsample)

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        out = []
        for part in clips.split(self.chunk):
            dist = self.vae.encode(part.to(self.device, self.dtype), return_dict=False)[0]
            z = dist.mode().float()
            out.append((z - self.mean.to(z.device)) / self.std.to(z.device))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of encode: float32 clips (B, 3, F, H, W), roughly in [-1, 1]."""
        out = []
        for part in latents.split(self.chunk):
            z = part.float().to(self.device) * self.std.to(self.device) + self.mean.to(self.device)
            out.append(self.vae.decode(z.to(self.dtype), return_dict=False)[0].float())
        return torch.cat(out)


def pretrained_folder(path: str, sub: str, what: str, class_name: str):
    """A saved model's folder: `path` itself, or its `sub/` folder when `path` is a pipeline folder;
    either may be a Hub id (`owner/name`), fetched through huggingface_hub's cache (swd.hub)."""
    from swd.hub import model_folder

    folder = model_folder(path, what, sub=sub) if path else None
    if folder is not None and (folder / sub / "config.json").is_file():
        folder = folder / sub
    if folder is None or not (folder / "config.json").is_file():
        raise SwdError(f"{what}: {path!r} is not a folder with a saved {class_name} (or a pipeline folder with {sub}/)")
    return folder


def load_vae(path: str, video: bool = False):
    """An AutoencoderKL (AutoencoderKLWan when `video`) from its folder, or from the `vae/` folder of
    a pipeline folder."""
    from diffusers import AutoencoderKL, AutoencoderKLWan

    cls = AutoencoderKLWan if video else AutoencoderKL
    return cls.from_pretrained(pretrained_folder(path, "vae", "model.vae", cls.__name__), use_safetensors=True)
