"""The `shapes` dataset: procedural 64 px scenes with GenEval-style captions that can be checked exactly.

Each sample is 1-4 flat-coloured shapes on white, separated by at least `GAP` px so they never
touch, and a caption from one of GenEval's six categories:

| category        | caption                           | claims checked by `swd.data.scoring` |
|-----------------|-----------------------------------|--------------------------------------|
| single_object   | "a star"                          | a star is present                    |
| two_object      | "a circle and a square"           | both are present                     |
| counting        | "three triangles"                 | exactly three triangles              |
| colors          | "a green circle"                  | a green circle is present            |
| position        | "a star to the left of a cross"   | some star lies left of some cross    |
| color_attr      | "a red square and a blue star"    | both coloured shapes are present     |

Sample `i` of seed `s` depends only on `(s, i)`, so a set of n samples is a prefix of any larger
set. The held-out split is by caption (about 10%): held-out captions are combinations the model
never saw, though each word of them it did.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from swd.data import IMAGE_SIZE, ImageSet, concept_split, default_cache_dir, read_image_set, write_image_set
from swd.errors import SwdError

SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
}
# Saturated hues at least 23 degrees apart (orange and yellow; the rest 33 or more), plus black:
# separable by hue alone, and mixing with the white background (antialiasing, blur) keeps a
# pixel's hue.
COLORS = {
    "red": (220, 30, 40),
    "orange": (245, 130, 15),
    "yellow": (235, 210, 0),
    "green": (40, 160, 60),
    "blue": (35, 85, 215),
    "purple": (145, 55, 190),
    "black": (25, 25, 25),
}
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
NUMBERS = {2: "two", 3: "three", 4: "four"}
STAR_INNER = 0.45  # inner / outer radius; fatter arms than the classic 0.38 survive 64 px
CROSS_HALF_WIDTH = 0.35  # arm half-width as a fraction of the half-extent
GAP = 4  # px between object boxes; connected components never merge
MARGIN = 2  # px from the image border
MIN_OFFSET = 18  # px between centres along the axis a position caption names
SIZES = {  # longest bbox side in px, per category: smaller when more objects must fit
    "single_object": (16, 36),
    "colors": (16, 36),
    "two_object": (14, 28),
    "color_attr": (14, 28),
    "position": (14, 26),
    "counting": (12, 22),
}
SUPERSAMPLE = 4  # render at 4x and box-downscale, for antialiased edges like a real image's
FILE_PATTERN = "shapes-64-s{seed}-n{n}.npz"
DEFAULT_N = 6000


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; coordinates in px of a 64 px image."""

    shape: str
    color: str
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Claim:
    """One checkable statement of a caption.

    kind "present": at least one object of `shape` (and `color`, if set);
    kind "count": exactly `count` objects of `shape`, any colour;
    kind "relation": some `shape`/`color` object is `relation` ("left of", ...) some `other_*` one.
    """

    kind: str
    shape: str
    color: str | None = None
    count: int | None = None
    relation: str | None = None
    other_shape: str | None = None
    other_color: str | None = None


@dataclass
class ShapeSample:
    """A scene: its caption, category, objects and the claims its caption makes."""

    caption: str
    category: str
    objects: list[ShapeObject]
    claims: list[Claim]
    split: str = field(default="train")
    seed: int = 0
    index: int = 0

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ShapeSample:
        objects = [ShapeObject(o["shape"], o["color"], tuple(o["bbox"])) for o in record["objects"]]
        claims = [Claim(**c) for c in record["claims"]]
        keys = ("caption", "category", "split", "seed", "index")
        return cls(objects=objects, claims=claims, **{k: record[k] for k in keys if k in record})


@functools.cache
def unit_outline(shape: str) -> np.ndarray | None:
    """The polygon of a shape, scaled so its bbox's longer side spans [-1, 1], centred; None for a circle."""
    if shape == "circle":
        return None
    if shape == "square":
        points = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        points = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "star":
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        radii = [1 if k % 2 == 0 else STAR_INNER for k in range(10)]
        points = [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)]
    elif shape == "cross":
        # One arm's three corners, turned a quarter at a time: (x, y) -> (-y, x).
        w = CROSS_HALF_WIDTH
        points = [(-w, -1), (w, -1), (w, -w)]
        for _ in range(3):
            points += [(-y, x) for x, y in points[-3:]]
    else:
        raise SwdError(f"shape: unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(0), p.max(0)
    p = (p - (lo + hi) / 2) * (2 / (hi - lo).max())
    p.flags.writeable = False  # cached and shared
    return p


def object_at(shape: str, color: str, cx: float, cy: float, size: float) -> ShapeObject:
    """The object of `shape` whose bbox's longer side is `size` px, centred on (cx, cy)."""
    half_w, half_h = _half_extent(shape)
    half = size / 2
    bbox = (cx - half * half_w, cy - half * half_h, cx + half * half_w, cy + half * half_h)
    return ShapeObject(shape, color, tuple(round(float(v), 3) for v in bbox))


@functools.cache
def _half_extent(shape: str) -> tuple[float, float]:
    """Half width and half height of the unit outline (the longer one is 1)."""
    outline = unit_outline(shape)
    return (1.0, 1.0) if outline is None else tuple(float(v) for v in np.abs(outline).max(0))


def render_scene(objects: list[ShapeObject], size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw objects on white: (size, size, 3) uint8, antialiased by supersampling."""
    big = size * SUPERSAMPLE
    scale = big / IMAGE_SIZE
    canvas = Image.new("RGB", (big, big), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        x0, y0, x1, y1 = (v * scale for v in obj.bbox)
        fill = COLORS[obj.color]
        outline = unit_outline(obj.shape)
        if outline is None:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
            continue
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2
        draw.polygon([(cx + half * x, cy + half * y) for x, y in outline], fill=fill)
    return np.asarray(canvas.reduce(SUPERSAMPLE))


def render_shapes(samples: list[ShapeSample], size: int = IMAGE_SIZE) -> np.ndarray:
    """Render samples: (N, size, size, 3) uint8."""
    return np.stack([render_scene(s.objects, size) for s in samples])


def _place(
    rng: np.random.Generator, sizes: list[float], shapes: list[str], colors: list[str]
) -> list[ShapeObject] | None:
    """Random non-touching positions for the objects, or None if they did not fit in 200 tries each."""
    placed: list[ShapeObject] = []
    for shape, color, size in zip(shapes, colors, sizes):
        for _ in range(200):
            lo, hi = MARGIN + size / 2, IMAGE_SIZE - MARGIN - size / 2
            obj = object_at(shape, color, rng.uniform(lo, hi), rng.uniform(lo, hi), size)
            if all(_apart(obj, other) for other in placed):
                placed.append(obj)
                break
        else:
            return None
    return placed


def _apart(a: ShapeObject, b: ShapeObject) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0


def satisfies(a: ShapeObject, relation: str, b: ShapeObject, margin: float) -> bool:
    """Whether `a` is `relation` `b`: centres differ by more than `margin` px along the named axis."""
    (ax, ay), (bx, by) = a.center, b.center
    return {
        "left of": bx - ax > margin,
        "right of": ax - bx > margin,
        "above": by - ay > margin,
        "below": ay - by > margin,
    }[relation]


def _clear_position(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    """Generation is stricter than the check: a clear offset along the axis, a small one across it."""
    (ax, ay), (bx, by) = a.center, b.center
    along, across = (
        (abs(ax - bx), abs(ay - by)) if relation in ("left of", "right of") else (abs(ay - by), abs(ax - bx))
    )
    return satisfies(a, relation, b, MIN_OFFSET) and across <= 0.5 * along


def make_sample(category: str, seed: int = 0, index: int = 0) -> ShapeSample:
    """Sample `index` of `seed` in `category`; the same arguments always give the same scene."""
    if category not in CATEGORIES:
        raise SwdError(f"category: unknown {category!r}; choose from {', '.join(CATEGORIES)}")
    rng = np.random.default_rng([seed, index])
    while True:  # rejection: rare layouts that do not fit are redrawn
        sample = _draw(category, rng)
        if sample is not None:
            sample.seed, sample.index = seed, index
            sample.split = concept_split(sample.caption)
            return sample


def _draw(category: str, rng: np.random.Generator) -> ShapeSample | None:
    if category == "counting":
        n = int(rng.integers(2, 5))
        shapes = [str(rng.choice(SHAPES))] * n
    else:  # two-object captions name two different shapes, as in GenEval
        n = 1 if category in ("single_object", "colors") else 2
        shapes = [str(s) for s in rng.choice(SHAPES, size=n, replace=False)]
    distinct_colors = category == "color_attr"
    colors = [str(c) for c in rng.choice(list(COLORS), size=n, replace=not distinct_colors)]
    sizes = [float(rng.uniform(*SIZES[category])) for _ in range(n)]
    objects = _place(rng, sizes, shapes, colors)
    if objects is None:
        return None
    if category == "position":
        relation = str(rng.choice(RELATIONS))
        if not _clear_position(objects[0], relation, objects[1]):
            return None
        caption = f"a {shapes[0]} {RELATION_PHRASES[relation]} a {shapes[1]}"
        claims = [Claim("relation", shapes[0], relation=relation, other_shape=shapes[1])]
    else:
        caption, claims = _caption(category, shapes, colors)
    return ShapeSample(caption, category, objects, claims)


def _a(word: str) -> str:
    """The indefinite article and the word: "a circle", "an orange"."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _caption(category: str, shapes: list[str], colors: list[str]) -> tuple[str, list[Claim]]:
    if category == "single_object":
        return f"a {shapes[0]}", [Claim("present", shapes[0])]
    if category == "two_object":
        return f"a {shapes[0]} and a {shapes[1]}", [Claim("present", shapes[0]), Claim("present", shapes[1])]
    if category == "counting":
        n = len(shapes)
        return f"{NUMBERS[n]} {PLURALS[shapes[0]]}", [Claim("count", shapes[0], count=n)]
    if category == "colors":
        return f"{_a(colors[0])} {shapes[0]}", [Claim("present", shapes[0], colors[0])]
    assert category == "color_attr"
    caption = f"{_a(colors[0])} {shapes[0]} and {_a(colors[1])} {shapes[1]}"
    return caption, [Claim("present", shapes[0], colors[0]), Claim("present", shapes[1], colors[1])]


def generate_shapes(n: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES) -> list[ShapeSample]:
    """n samples, categories in turn (balanced): sample i is category `categories[i % len]`."""
    if n < 1:
        raise SwdError(f"n: must be a positive number of samples, got {n}")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        given = repr(unknown[0]) if unknown else "none given"
        raise SwdError(f"categories: {given}; choose from {', '.join(CATEGORIES)}")
    return [make_sample(categories[i % len(categories)], seed, i) for i in range(n)]


def build_shapes(
    out: str | Path | None = None, n: int = DEFAULT_N, seed: int = 0, progress: bool = True
) -> Path:
    """Generate, render and store n samples; returns the file (`out`: a directory or a `.npz` path)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if n < 1:
        raise SwdError(f"n: must be a positive number of samples, got {n}")
    samples, images = [], []
    for i in tqdm(range(n), desc="shapes", unit="img", disable=not progress):
        samples.append(make_sample(CATEGORIES[i % len(CATEGORIES)], seed, i))
        images.append(render_scene(samples[-1].objects))
    images = np.stack(images)
    records = [s.to_record() for s in samples]
    summary = {
        "name": "shapes",
        "size": IMAGE_SIZE,
        "seed": seed,
        "n": n,
        "shapes": list(SHAPES),
        "colors": COLORS,
        "categories": {c: sum(s.category == c for s in samples) for c in CATEGORIES},
        "counts": {
            "images": n,
            "train": sum(s.split == "train" for s in samples),
            "heldout": sum(s.split == "heldout" for s in samples),
            "captions": len({s.caption for s in samples}),
        },
        "split_rule": "sha256(caption) % 1000 < 100 -> heldout",
        "license": "generated by swd (no third-party art)",
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    return write_image_set(_resolve_path(out, n, seed), images, records, summary)


def _resolve_path(out: str | Path | None, n: int, seed: int) -> Path:
    out = default_cache_dir() if out is None else Path(out)
    return out if out.suffix == ".npz" else out / FILE_PATTERN.format(seed=seed, n=n)


def load_shapes(
    path: str | Path | None = None,
    split: str | None = None,
    n: int = DEFAULT_N,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ImageSet, list[ShapeSample]]:
    """The shapes set and its samples (for scoring); built into the cache first if it is missing.

    `path` is a directory or a `.npz` file (default: the cache's file for `n` and `seed`).
    """
    file = _resolve_path(path, n, seed)
    if not file.is_file():
        if path is not None and Path(path).suffix == ".npz":
            raise SwdError(f"path: no shapes set at {file}; build it with `swd data build shapes`")
        build_shapes(file, n=n, seed=seed, progress=progress)
    data = read_image_set(file).select(split)
    return data, [ShapeSample.from_record(r) for r in data.records]
