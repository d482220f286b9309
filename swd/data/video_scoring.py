"""Exact scorer for the `moving-shapes` clips: are the captioned shapes there, in their colours,
moving the captioned way at the captioned speed?

For one clip and each object its caption names:
1. every frame goes through the image scorer's detector (`swd.data.scoring.detect_batch`: palette
   colour by hue, connected components, shape from fill / solidity / symmetry), at 64 px;
2. the object's track is the largest detection of its colour in each frame; the colour holds if
   the track covers at least half the frames;
3. the shape holds if most of the track's detections are named that shape;
4. motion is the least-squares velocity of the track's centres (64 px units per frame): its larger
   axis and sign give the direction, its size the speed (`SLOW_RANGE`, `FAST_MIN`).
A clip is correct when every claim of every object holds. Noise rarely holds a palette-coloured
component of `MIN_AREA` pixels, let alone one moving steadily, so it scores about 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from swd.data.moving_shapes import DIRECTIONS, MovingObject, MovingSample
from swd.data.scoring import Detection, Report, as_uint8_images, detect_batch, share
from swd.errors import SwdError

# Speeds are 2 ("slowly") and 4 ("quickly") units per frame; the boundaries sit between them.
STILL_BELOW = 1.0  # a track moving less than this per frame is standing still: no direction
FAST_MIN = 3.0
ATTRIBUTES = ("color", "shape", "direction", "speed")


@dataclass(frozen=True)
class TrackReading:
    """What the frames show for one captioned object."""

    frames_found: int
    shape: str | None
    velocity: tuple[float, float] | None  # (vx, vy), 64 px units per frame

    @property
    def direction(self) -> str | None:
        if self.velocity is None:
            return None
        vx, vy = self.velocity
        if max(abs(vx), abs(vy)) < STILL_BELOW:
            return None
        if abs(vx) >= abs(vy):
            return "right" if vx > 0 else "left"
        return "down" if vy > 0 else "up"

    @property
    def speed(self) -> str | None:
        if self.direction is None:
            return None
        return "quickly" if max(abs(v) for v in self.velocity) >= FAST_MIN else "slowly"


@dataclass
class ClipScore:
    objects: int
    checks: list[dict[str, bool]]  # per captioned object, one verdict per attribute
    readings: list[TrackReading]

    @property
    def correct(self) -> bool:
        return all(all(c.values()) for c in self.checks)


@dataclass
class VideoReport(Report):
    """Scores (`ClipScore`) of a batch of clips: the share of clips whose every claim holds, and
    per attribute."""

    @property
    def per_attribute(self) -> dict[str, float]:
        """Share of captioned objects whose colour / shape / direction / speed holds."""
        checks = [c for s in self.scores for c in s.checks]
        return {a: float(np.mean([c[a] for c in checks])) for a in ATTRIBUTES} if checks else {}

    @property
    def motion_accuracy(self) -> float:
        """Share of captioned objects found in their colour and moving the captioned direction."""
        return share(c["color"] and c["direction"] for s in self.scores for c in s.checks)

    def to_dict(self) -> dict:
        return {"clips": len(self.scores), "accuracy": self.accuracy, "motion_accuracy": self.motion_accuracy,
                **{f"{a}_accuracy": v for a, v in self.per_attribute.items()}}


def read_track(per_frame: Sequence[list[Detection]], color: str) -> TrackReading:
    """The largest detection of `color` in each frame, its majority shape and fitted velocity."""
    times, centres, shapes = [], [], []
    for t, detections in enumerate(per_frame):
        mine = [d for d in detections if d.color == color]
        if mine:
            best = max(mine, key=lambda d: d.area)
            times.append(t)
            centres.append(best.center)
            shapes.append(best.shape)
    if not times:
        return TrackReading(0, None, None)
    shape = Counter(shapes).most_common(1)[0][0]
    if len(times) < 2:
        return TrackReading(len(times), shape, None)
    t = np.asarray(times, dtype=np.float64)
    xy = np.asarray(centres, dtype=np.float64)
    slope = ((t - t.mean())[:, None] * (xy - xy.mean(0))).sum(0) / ((t - t.mean()) ** 2).sum()
    return TrackReading(len(times), shape, (float(slope[0]), float(slope[1])))


def check_object(obj: MovingObject, reading: TrackReading, frames: int) -> dict[str, bool]:
    found = reading.frames_found * 2 >= frames
    return {
        "color": found,
        "shape": found and reading.shape == obj.shape,
        "direction": found and reading.direction == obj.direction,
        "speed": found and reading.speed == obj.speed,
    }


def as_uint8_clips(clips, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Clips as (N, F, H, W, 3) uint8 from (N, F, H, W, 3) or (N, F, 3, H, W), uint8 or float in
    `value_range` (the pipelines' frames are in [0, 1])."""
    if hasattr(clips, "detach"):
        clips = clips.detach().float().cpu().numpy() if clips.dtype.is_floating_point else clips.cpu().numpy()
    x = np.asarray(clips)
    if x.ndim != 5:
        raise SwdError(f"clips: expected (N, F, H, W, 3) or (N, F, 3, H, W), got shape {tuple(x.shape)}")
    n, f = x.shape[:2]
    frames = as_uint8_images(x.reshape(n * f, *x.shape[2:]), value_range)
    return frames.reshape(n, f, *frames.shape[1:])


def score_clips(clips, samples: Sequence[MovingSample], value_range: tuple[float, float] = (0.0, 1.0)) -> VideoReport:
    """Score generated clips against the samples whose captions produced them (one per clip)."""
    batch = as_uint8_clips(clips, value_range)
    if len(batch) != len(samples):
        raise SwdError(f"samples: {len(samples)} samples for {len(batch)} clips; give one per clip")
    scores = []
    for clip, sample in zip(batch, samples):
        per_frame = detect_batch(clip)
        readings = [read_track(per_frame, o.color) for o in sample.objects]
        checks = [check_object(o, r, len(clip)) for o, r in zip(sample.objects, readings)]
        scores.append(ClipScore(len(sample.objects), checks, readings))
    return VideoReport(scores)


__all__ = ["DIRECTIONS", "VideoReport", "ClipScore", "TrackReading", "read_track", "score_clips", "as_uint8_clips"]
