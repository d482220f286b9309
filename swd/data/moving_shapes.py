"""The `moving-shapes` video testbed: procedural clips whose captions name shape, colour, direction
and speed, all checkable exactly from the frames (`swd.data.video_scoring`).

A clip is `FRAMES` frames (9 = 4 x 2 + 1, a length Wan's causal VAE encodes without loss) of
`CLIP_SIZE` px, showing 1 or 2 flat-coloured shapes of different colours on white, each moving in
a straight line at constant speed:

    "a red star moving right quickly"
    "a blue circle moving up slowly and a green cross moving left quickly"

Geometry is given in the 64 px units of `swd.data.shapes` (its renderer draws them at 32 px), so
the image testbed's shapes, palette and antialiasing carry over. Clip `i` of seed `s` depends only
on `(s, i)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swd.data.shapes import COLORS, IMAGE_SIZE, SHAPES, ShapeObject, object_at, render_scene
from swd.errors import SwdError

CLIP_SIZE = 32  # px per side of a rendered frame
FRAMES = 9
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}  # image y grows downwards
SPEEDS = {"slowly": 2.0, "quickly": 4.0}  # 64 px units per frame: 1 and 2 px per frame at 32 px
OBJECT_SIZE = (18.0, 24.0)  # longest bbox side, 64 px units (9-12 px at 32 px)
MARGIN = 2.0  # 64 px units kept clear of the border
GAP = 4.0  # 64 px units between two objects' boxes at every frame


@dataclass(frozen=True)
class MovingObject:
    """One shape on a straight path: centre (cx, cy) at frame 0, moving `speed` units per frame."""

    shape: str
    color: str
    size: float
    start: tuple[float, float]
    direction: str
    speed: str

    def at(self, frame: int) -> ShapeObject:
        dx, dy = DIRECTIONS[self.direction]
        step = SPEEDS[self.speed] * frame
        return object_at(self.shape, self.color, self.start[0] + dx * step, self.start[1] + dy * step, self.size)

    @property
    def phrase(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction} {self.speed}"


@dataclass(frozen=True)
class MovingSample:
    """A clip's objects and caption; `frames` frames long."""

    objects: tuple[MovingObject, ...]
    frames: int = FRAMES

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase for o in self.objects)


def _inside(obj: ShapeObject) -> bool:
    x0, y0, x1, y1 = obj.bbox
    return x0 >= MARGIN and y0 >= MARGIN and x1 <= IMAGE_SIZE - MARGIN and y1 <= IMAGE_SIZE - MARGIN


def _apart(a: ShapeObject, b: ShapeObject) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0


def _draw_object(rng: np.random.Generator, frames: int, taken_color: str | None) -> MovingObject:
    colors = [c for c in COLORS if c != taken_color]
    shape = str(rng.choice(SHAPES))
    color = str(rng.choice(colors))
    direction = str(rng.choice(list(DIRECTIONS)))
    size = float(rng.uniform(*OBJECT_SIZE))
    # Only speeds whose whole path fits the frame (long clips leave only the slow one, or none).
    fitting = [s for s in SPEEDS if SPEEDS[s] * (frames - 1) + size + 2 * MARGIN <= IMAGE_SIZE]
    if not fitting:
        raise SwdError(f"frames: {frames} frames of motion do not fit a {IMAGE_SIZE}-unit frame at any speed")
    speed = str(rng.choice(fitting))
    # Start where the whole path stays inside the frame: the path spans speed * (frames - 1).
    travel = SPEEDS[speed] * (frames - 1)
    dx, dy = DIRECTIONS[direction]
    half = size / 2 + MARGIN
    lo_x, hi_x = half + max(0.0, -dx * travel), IMAGE_SIZE - half - max(0.0, dx * travel)
    lo_y, hi_y = half + max(0.0, -dy * travel), IMAGE_SIZE - half - max(0.0, dy * travel)
    start = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
    return MovingObject(shape, color, round(size, 3), (round(start[0], 3), round(start[1], 3)), direction, speed)


def make_clip(seed: int = 0, index: int = 0, frames: int = FRAMES, max_objects: int = 2) -> MovingSample:
    """Clip `index` of `seed`: 1..max_objects objects that stay inside and apart at every frame."""
    if frames < 2:
        raise SwdError(f"frames: a moving clip needs at least 2 frames, got {frames}")
    if max_objects not in (1, 2):
        raise SwdError(f"max_objects: expected 1 or 2, got {max_objects}")
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(1, max_objects + 1))
    while True:
        first = _draw_object(rng, frames, None)
        objects = [first]
        if count == 2:
            objects.append(_draw_object(rng, frames, first.color))
        paths = [[o.at(f) for f in range(frames)] for o in objects]
        if not all(_inside(p) for path in paths for p in path):
            continue
        if count == 2 and not all(_apart(a, b) for a, b in zip(*paths)):
            continue
        return MovingSample(tuple(objects), frames)


def generate_clips(n: int, seed: int = 0, frames: int = FRAMES, max_objects: int = 2) -> list[MovingSample]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SwdError(f"n: expected a positive int, got {n!r}")
    return [make_clip(seed, i, frames, max_objects) for i in range(n)]


def render_clip(sample: MovingSample, size: int = CLIP_SIZE) -> np.ndarray:
    """(frames, size, size, 3) uint8."""
    return np.stack([render_scene([o.at(f) for o in sample.objects], size) for f in range(sample.frames)])


def render_clips(samples: list[MovingSample], size: int = CLIP_SIZE) -> np.ndarray:
    """(N, frames, size, size, 3) uint8."""
    return np.stack([render_clip(s, size) for s in samples])
