"""Scale schedules: the latent size and the noise level of every step of a scale-wise sampler.

A `ScaleSchedule` pairs step i's latent size with its noise level sigma_i: (h_i, w_i) for images,
(frames_i, h_i, w_i) for video (all in latent units). The sampler starts from pure noise at the
first size and denoises, upsamples and re-noises at every step, so a schedule must grow (or keep)
its size while its sigmas fall. Presets are the published ones (SWD_SPEC section 2), the 64 px
testbed's, and Wan2.1's spatio-temporal ones.

Video latents come from a causal VAE that compresses time by 4: pixel clips have 4k + 1 frames,
and (frames - 1) // 4 + 1 latent frames (the first latent frame encodes one pixel frame, every
other one four), so 21 / 41 / 61 / 81 pixel frames are 6 / 11 / 16 / 21 latent frames.

The authors express sigmas as boundary indices into SD3.5's 28-step Euler grid with shift 3; the
grid itself (`flow_sigmas`) is also the teacher's sampling grid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from swd.errors import SwdError

# SD3.5's training schedule: 1000 train timesteps, shift 3 (SWD_SPEC section 1).
NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 3.0
DEFAULT_GRID_STEPS = 28


def shift_sigmas(sigmas: Sequence[float], shift: float) -> list[float]:
    """Timestep shift of rectified-flow models: s -> shift * s / (1 + (shift - 1) * s)."""
    return [shift * s / (1.0 + (shift - 1.0) * s) for s in sigmas]


def flow_sigmas(steps: int = DEFAULT_GRID_STEPS, shift: float = DEFAULT_SHIFT) -> list[float]:
    """The Euler grid of a flow-matching model: `steps` sigmas from 1 down, then a final 0.

    Uniform in the unshifted time between 1 and the smallest training level (1 / 1000 pushed
    through the shift), then shifted. For steps=28, shift=3 this is SD3.5's default grid:
    1.0, .9874, ..., .1109, .0089, 0.
    """
    if steps < 1:
        raise SwdError(f"steps: must be >= 1, got {steps}")
    if shift <= 0:
        raise SwdError(f"shift: must be > 0, got {shift}")
    t_min = shift_sigmas([1.0 / NUM_TRAIN_TIMESTEPS], shift)[0]
    if steps == 1:
        base = [1.0]
    else:
        base = [1.0 + (t_min - 1.0) * i / (steps - 1) for i in range(steps)]
    return shift_sigmas(base, shift) + [0.0]


# Wan2.1's causal video VAE: 4 pixel frames per latent frame after the first, 8 pixels per latent pixel.
VAE_TEMPORAL_FACTOR = 4
VAE_SPATIAL_FACTOR = 8


def _as_hw(scale, index: int) -> tuple[int, ...]:
    """Normalise a scale given as an int (square image), an (h, w) pair or a (frames, h, w) triple."""
    if isinstance(scale, bool):
        raise SwdError(f"scales[{index}]: expected an int, [h, w] or [frames, h, w], got {scale!r}")
    if isinstance(scale, int):
        return (scale, scale)
    if isinstance(scale, (list, tuple)) and len(scale) in (2, 3) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in scale
    ):
        return tuple(int(v) for v in scale)
    raise SwdError(f"scales[{index}]: expected an int, [h, w] or [frames, h, w], got {scale!r}")


def latent_frames(pixel_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
    """Latent frames of a clip of `pixel_frames` frames under a causal VAE: (frames - 1) // 4 + 1.

    Only 4k + 1 frames encode without dropping any (the first latent frame holds one pixel frame,
    each later one holds four), so other counts are refused.
    """
    if isinstance(pixel_frames, bool) or not isinstance(pixel_frames, int) or pixel_frames < 1:
        raise SwdError(f"frames: expected a positive int, got {pixel_frames!r}")
    if (pixel_frames - 1) % temporal_factor:
        below = (pixel_frames - 1) // temporal_factor * temporal_factor + 1
        raise SwdError(
            f"frames: {pixel_frames} is not {temporal_factor}k + 1 (the causal VAE's rule); "
            f"use {below} or {below + temporal_factor}"
        )
    return (pixel_frames - 1) // temporal_factor + 1


def pixel_frames(latent: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
    """Pixel frames a causal VAE decodes from `latent` latent frames: 4 (latent - 1) + 1."""
    return temporal_factor * (latent - 1) + 1


@dataclass(frozen=True)
class ScaleSchedule:
    """Latent sizes and noise levels of a few-step scale-wise sampler.

    scales: one latent size per step, (h, w) in latent pixels (an int means square), or for
        video (frames, h, w) in latent frames and pixels; every step has the same kind.
    sigmas: one noise level per step, strictly decreasing in (0, 1]; the first step starts from
        pure noise when sigmas[0] == 1.
    """

    scales: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    name: str = "custom"
    description: str = field(default="", compare=False)

    def __post_init__(self):
        scales = tuple(_as_hw(s, i) for i, s in enumerate(self.scales))
        try:
            sigmas = tuple(float(s) for s in self.sigmas)
        except (TypeError, ValueError):
            raise SwdError(f"sigmas: expected a list of numbers, got {self.sigmas!r}") from None
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "sigmas", sigmas)
        self._validate()

    def _validate(self) -> None:
        if not self.scales:
            raise SwdError("scales: a schedule needs at least one step")
        if len(self.scales) != len(self.sigmas):
            raise SwdError(
                f"scales and sigmas: lengths differ ({len(self.scales)} scales, {len(self.sigmas)} sigmas)"
            )
        dims = len(self.scales[0])
        for i, size in enumerate(self.scales):
            if len(size) != dims:
                raise SwdError(
                    f"scales[{i}]: {list(size)} mixes image [h, w] and video [frames, h, w] scales in one schedule"
                )
            if any(v <= 0 for v in size):
                raise SwdError(f"scales[{i}]: sizes must be positive, got {size}")
        for i in range(1, len(self.scales)):
            before, after = self.scales[i - 1], self.scales[i]
            if any(b < a for a, b in zip(before, after)):
                raise SwdError(
                    f"scales[{i}]: sizes must not shrink from step to step, got {before} then {after}"
                )
        for i, s in enumerate(self.sigmas):
            if not (math.isfinite(s) and 0.0 < s <= 1.0):
                raise SwdError(f"sigmas[{i}]: must lie in (0, 1], got {s}")
        for i in range(1, len(self.sigmas)):
            if not self.sigmas[i] < self.sigmas[i - 1]:
                raise SwdError(
                    f"sigmas[{i}]: must be strictly decreasing, got {self.sigmas[i - 1]} then {self.sigmas[i]}"
                )

    @property
    def steps(self) -> int:
        return len(self.scales)

    @property
    def final_size(self) -> tuple[int, ...]:
        return self.scales[-1]

    @property
    def is_scale_wise(self) -> bool:
        return len(set(self.scales)) > 1

    @property
    def is_video(self) -> bool:
        """Scales are (frames, h, w) latent sizes."""
        return len(self.scales[0]) == 3

    def _patch(self, patch_size) -> tuple[int, ...]:
        """A patch size per scale dimension: an int patches h and w (and 1 frame at a time)."""
        dims = len(self.scales[0])
        if isinstance(patch_size, int):
            return (1, patch_size, patch_size)[-dims:] if dims == 3 else (patch_size, patch_size)
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != dims:
            raise SwdError(f"patch_size: {patch} does not match {dims}-d scales {self.scales[0]}")
        return patch

    def image_tokens(self, patch_size=2) -> list[int]:
        """Tokens the transformer sees at each step (patches of patch_size x patch_size; for video
        patch_size may be (t, h, w), and an int means one frame per patch)."""
        patch = self._patch(patch_size)
        return [math.prod(v // p for v, p in zip(size, patch)) for size in self.scales]

    def relative_cost(self, patch_size=2, text_tokens: int = 0) -> float:
        """Cost in full-resolution-step equivalents, counting tokens (linear in tokens).

        With text_tokens=0 this is the token ratio of SWD_SPEC section 2: the 4-step 64 -> 128
        schedule costs (1024 + 1600 + 2304 + 4096) / 4096 = 2.2 full steps. Attention grows
        quadratically, so FLOPs (see `swd bench flops`) differ slightly from this count.
        """
        tokens = self.image_tokens(patch_size)
        full = tokens[-1] + text_tokens
        return sum(t + text_tokens for t in tokens) / full

    def at_full_resolution(self) -> "ScaleSchedule":
        """The same sigmas at the final size throughout: the full-resolution few-step baseline."""
        return ScaleSchedule(
            scales=tuple(self.final_size for _ in self.scales),
            sigmas=self.sigmas,
            name=f"{self.name}-full",
            description=f"{self.name} at constant full resolution (few-step baseline)",
        )

    def scaled(self, factor: float) -> "ScaleSchedule":
        """Every scale multiplied by factor (rounded), e.g. to move a preset to another resolution."""
        scales = tuple(tuple(round(v * factor) for v in size) for size in self.scales)
        return ScaleSchedule(scales=scales, sigmas=self.sigmas, name=f"{self.name}-x{factor:g}")

    def pixel_sizes(self, temporal_factor: int = VAE_TEMPORAL_FACTOR, spatial_factor: int = VAE_SPATIAL_FACTOR):
        """Each video scale in pixels, (4 (f - 1) + 1 frames, 8 h, 8 w) for Wan2.1's VAE."""
        if not self.is_video:
            raise SwdError(f"schedule {self.name}: pixel_sizes is for video (frames, h, w) scales")
        return [(pixel_frames(f, temporal_factor), h * spatial_factor, w * spatial_factor) for f, h, w in self.scales]

    def check_video_model(self, patch_size, max_size=None, what: str = "model") -> None:
        """Raise SwdError unless every (frames, h, w) scale fits a video model with patch (t, h, w)
        and largest latent size `max_size` (an int for every axis, or (frames, h, w))."""
        if not self.is_video:
            raise SwdError(f"schedule {self.name}: a video model needs (frames, h, w) scales, got {self.scales[0]}")
        patch = self._patch(patch_size)
        limit = (max_size,) * 3 if isinstance(max_size, int) else max_size
        for i, size in enumerate(self.scales):
            shown = "x".join(map(str, size))
            for axis, v, p in zip(("frames", "height", "width"), size, patch):
                if v % p:
                    raise SwdError(f"scales[{i}]: {shown} has {axis} {v}, not divisible by the {what}'s patch size {p}")
            if limit is not None and any(m is not None and v > m for v, m in zip(size, limit)):
                raise SwdError(f"scales[{i}]: {shown} exceeds the {what}'s largest latent size {'x'.join(map(str, limit))}")

    def check_model(self, patch_size, max_size=None, what: str = "model") -> None:
        """Raise SwdError unless every scale fits a model with this patch size and largest side.

        Image models have an int patch size; video models a (t, h, w) one and take (frames, h, w)
        scales only (`check_video_model`).
        """
        video_model = not isinstance(patch_size, int)
        if self.is_video and not video_model:
            raise SwdError(f"schedule {self.name}: (frames, h, w) video scales do not fit the {what}, an image model")
        if video_model:
            if not self.is_video:
                raise SwdError(f"schedule {self.name}: the {what} is a video model; it needs (frames, h, w) scales")
            return self.check_video_model(patch_size, max_size, what)
        for i, (h, w) in enumerate(self.scales):
            if h % patch_size or w % patch_size:
                raise SwdError(
                    f"scales[{i}]: {h}x{w} is not divisible by the {what}'s patch size {patch_size}"
                )
            if max_size is not None and (h > max_size or w > max_size):
                raise SwdError(
                    f"scales[{i}]: {h}x{w} exceeds the {what}'s largest latent side {max_size}"
                )

    @classmethod
    def from_boundaries(
        cls,
        scales: Iterable,
        boundaries: Sequence[int],
        grid: Sequence[float] | None = None,
        name: str = "custom",
        description: str = "",
    ) -> "ScaleSchedule":
        """Build a schedule whose sigmas are picked from a grid by index (the authors' notation)."""
        grid = list(grid) if grid is not None else flow_sigmas()
        sigmas = []
        for i, b in enumerate(boundaries):
            if not isinstance(b, int) or not 0 <= b < len(grid) - 1:
                raise SwdError(f"boundaries[{i}]: must be an index in [0, {len(grid) - 2}], got {b!r}")
            sigmas.append(grid[b])
        return cls(scales=tuple(scales), sigmas=tuple(sigmas), name=name, description=description)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "scales": [list(s) for s in self.scales],
            "sigmas": [round(s, 6) for s in self.sigmas],
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data) -> "ScaleSchedule":
        if not isinstance(data, dict):
            raise SwdError(f"schedule: expected a mapping with 'scales' and 'sigmas', got {type(data).__name__}")
        known = {"name", "scales", "sigmas", "boundaries", "description"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SwdError(f"schedule: unknown key(s) {unknown}; expected some of {sorted(known)}")
        if "scales" not in data:
            raise SwdError("schedule: missing key 'scales'")
        if not isinstance(data["scales"], list):
            raise SwdError(f"scales: expected a list, got {data['scales']!r}")
        name = str(data.get("name", "custom"))
        description = str(data.get("description", ""))
        if "boundaries" in data:
            if "sigmas" in data:
                raise SwdError("schedule: give either 'sigmas' or 'boundaries', not both")
            if not isinstance(data["boundaries"], list):
                raise SwdError(f"boundaries: expected a list, got {data['boundaries']!r}")
            return cls.from_boundaries(data["scales"], data["boundaries"], name=name, description=description)
        if "sigmas" not in data:
            raise SwdError("schedule: missing key 'sigmas' (or 'boundaries')")
        if not isinstance(data["sigmas"], list):
            raise SwdError(f"sigmas: expected a list, got {data['sigmas']!r}")
        return cls(scales=tuple(data["scales"]), sigmas=tuple(data["sigmas"]), name=name, description=description)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else yaml.safe_dump(self.to_dict(), sort_keys=False)
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> "ScaleSchedule":
        path = Path(path)
        if not path.is_file():
            raise SwdError(f"schedule file: {path} does not exist")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise SwdError(f"schedule file: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first})") from None
        return cls.from_dict(data)


def _preset_table() -> dict[str, ScaleSchedule]:
    grid = flow_sigmas()
    table = {}

    def add(name, scales, boundaries, description):
        table[name] = ScaleSchedule.from_boundaries(scales, boundaries, grid, name=name, description=description)

    add("sd35-large-4", [64, 80, 96, 128], [0, 7, 14, 18], "SD3.5 Large / Medium 4-step, 1024 px (latent 64 -> 128)")
    add("sd35-medium-6", [32, 48, 64, 80, 96, 128], [0, 4, 7, 12, 14, 18], "SD3.5 Medium 6-step, 1024 px (latent 32 -> 128)")
    add("sd35-medium-4-wide", [32, 64, 96, 128], [0, 4, 12, 18], "SD3.5 Medium 4-step, older wide preset (latent 32 -> 128)")
    add("flux-dev-4", [64, 80, 96, 128], [0, 7, 14, 18], "FLUX.1-dev 4-step, 1024 px (latent 64 -> 128, packed 2x2)")
    # The authors' names for the same published schedules (spec section 2).
    add("sd35-medium-4", [64, 80, 96, 128], [0, 7, 14, 18], "SD3.5 Medium 4-step, 1024 px (latent 64 -> 128)")
    add("flux-4", [64, 80, 96, 128], [0, 7, 14, 18], "FLUX.1-dev 4-step, 1024 px (latent 64 -> 128, packed 2x2)")
    # The authors' first README (yandex-research/swd) lists an SD3.5 Large 6-step student with the
    # Medium 6-step scales and sigmas (1, .9454, .8959, .7904, .7371, .6022); their later README drops it.
    add("sd35-large-6", [32, 48, 64, 80, 96, 128], [0, 4, 7, 12, 14, 18], "SD3.5 Large 6-step, 1024 px (latent 32 -> 128)")
    # The testbed is a 64 px pixel-space model: the same sigmas at half the relative sizes.
    add("testbed-4", [32, 40, 48, 64], [0, 7, 14, 18], "64 px testbed 4-step (32 -> 64 px)")
    add("testbed-6", [16, 24, 32, 40, 48, 64], [0, 4, 7, 12, 14, 18], "64 px testbed 6-step (16 -> 64 px)")
    add("testbed-full-4", [64, 64, 64, 64], [0, 7, 14, 18], "64 px testbed 4-step at full resolution (DMD2-style baseline)")
    # Wan2.1 text-to-video (SWD_SPEC section 5): the paper's end points, 21x160x272 -> 81x480x832
    # pixels = 6x20x34 -> 21x60x104 latents. The intermediate scales and the sigmas are not
    # published (neither the authors' release nor the paper text we hold gives them): ours
    # space the latent frames evenly (6, 11, 16, 21 = 21, 41, 61, 81 pixel frames, every one
    # 4k + 1) and h, w linearly rounded to the patch size 2, with the image presets' sigmas.
    add("wan-4", [(6, 20, 34), (11, 34, 58), (16, 46, 80), (21, 60, 104)], [0, 7, 14, 18],
        "Wan2.1 4-step spatio-temporal, 21x160x272 -> 81x480x832 px (paper's end points, our middle)")
    add("wan-space-4", [(21, 20, 34), (21, 34, 58), (21, 46, 80), (21, 60, 104)], [0, 7, 14, 18],
        "Wan2.1 4-step growing space only, 81 frames at 160x272 -> 480x832 px")
    # SDXL (DDPM, epsilon): sigma = timestep / 1000, the authors' README call passes timesteps
    # 1000, 800, 600, 400 (and 0) with scales 64, 80, 96, 128; not a flow grid.
    table["sdxl-4"] = ScaleSchedule(scales=((64, 64), (80, 80), (96, 96), (128, 128)), sigmas=(1.0, 0.8, 0.6, 0.4),
                                    name="sdxl-4", description="SDXL 4-step MMD-only student, 1024 px (latent 64 -> 128, DDPM)")
    # The moving-shapes video testbed (pixel space, 9 x 32 x 32 clips, patch 1x4x4): frames
    # 3 / 5 / 7 / 9 are the clip resampled over the same duration (sample with time_mode="uniform":
    # pixel frames have no causal first frame).
    add("moving-shapes-4", [(3, 16, 16), (5, 20, 20), (7, 24, 24), (9, 32, 32)], [0, 7, 14, 18],
        "moving-shapes video testbed 4-step, 3x16x16 -> 9x32x32 px (frames x h x w)")
    return table


PRESETS: dict[str, ScaleSchedule] = _preset_table()

# Preset -> the authors' published checkpoint (Hub id) it samples, from the Hub links in the
# authors' README (yandex-research/swd); sd35-large-6 and the wide 4-step preset are from its first
# version (the 6-step Large student, and the Medium 4-step student's first scales, 32 -> 128).
CHECKPOINTS: dict[str, str] = {
    "sd35-large-4": "yresearch/swd-large-4-steps",
    "sd35-large-6": "yresearch/swd-large-6-steps",
    "sd35-medium-4": "yresearch/swd-medium-4-steps",
    "sd35-medium-4-wide": "yresearch/swd-medium-4-steps",
    "sd35-medium-6": "yresearch/swd-medium-6-steps",
    "flux-4": "yresearch/swd_flux",
    "flux-dev-4": "yresearch/swd_flux",
    "sdxl-4": "yresearch/swd-sdxl",
}


def from_authors(scales, sigmas, timesteps=None, name: str = "authors") -> ScaleSchedule:
    """The authors' call style: latent `scales` per step and `sigmas` with or without the trailing 0.

    `timesteps`, when given, must equal 1000 * sigma per step (within 1e-3 * 1000). Their SDXL call
    passes `timesteps` (1000 * sigmas, trailing 0 included) without `sigmas`: sigmas = timesteps / 1000.
    """
    if scales is None or (sigmas is None and timesteps is None):
        raise SwdError("scales: the authors' call style needs scales= with sigmas= or timesteps=")
    if sigmas is None:
        try:
            sigmas = [float(t) / NUM_TRAIN_TIMESTEPS for t in timesteps]
        except (TypeError, ValueError):
            raise SwdError(f"timesteps: expected a list of numbers, got {timesteps!r}") from None
    try:
        sigmas = [float(s) for s in sigmas]
    except (TypeError, ValueError):
        raise SwdError(f"sigmas: expected a list of numbers, got {sigmas!r}") from None
    scales = list(scales)
    if len(sigmas) == len(scales) + 1 and sigmas[-1] == 0.0:
        sigmas = sigmas[:-1]
    if len(sigmas) != len(scales):
        raise SwdError(f"sigmas: {len(sigmas)} values for {len(scales)} scales (one per step, optionally a trailing 0)")
    if timesteps is not None:
        steps = [float(t) for t in timesteps]
        if steps and len(steps) == len(sigmas) + 1 and steps[-1] == 0.0:
            steps = steps[:-1]
        if len(steps) != len(sigmas) or any(abs(t - 1000 * s) > 1.0 for t, s in zip(steps, sigmas)):
            raise SwdError(f"timesteps: {list(timesteps)} do not equal 1000 * sigmas {sigmas}")
    return ScaleSchedule(scales=tuple(scales), sigmas=tuple(sigmas), name=name)


def get_preset(name: str) -> ScaleSchedule:
    try:
        return PRESETS[name]
    except KeyError:
        raise SwdError(f"schedule: unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def resolve_schedule(spec: str | ScaleSchedule) -> ScaleSchedule:
    """A preset name, a path to a YAML/JSON schedule file, or a ScaleSchedule."""
    if isinstance(spec, ScaleSchedule):
        return spec
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.endswith((".yaml", ".yml", ".json")) or Path(spec).exists():
        return ScaleSchedule.load(spec)
    return get_preset(spec)
