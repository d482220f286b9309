"""Exact scorer for the `shapes` set: does a generated image show what its caption claims?

Like GenEval, but with geometry in place of a detector, so it needs no weights and is exact on
clean renders. For one image:

1. bring it to 64 px uint8 RGB;
2. label each pixel with a palette colour by hue (white background and weak antialiased edges
   are unsaturated and fall out; black is the dark pixels);
3. split each colour into 4-connected components, fill their holes, drop those under `MIN_AREA`;
4. name each component's shape from three scale-free numbers: fill (area / bbox area), solidity
   (area / convex-hull area) and symmetry (overlap with itself turned 90 degrees), whichever
   shape's clean-render values are nearest;
5. check every claim of the caption against the detections; the image is correct if all hold.

Pure noise rarely holds a component of `MIN_AREA` pixels of one colour, so it scores about 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from swd.data.shapes import COLORS, IMAGE_SIZE, Claim, ShapeSample, satisfies
from swd.errors import SwdError

MIN_AREA = 12  # px at 64 px: the smallest drawn object (a 12 px star) has ~45
MIN_SATURATION = 0.4  # below: background, or an edge less than ~40% covered
MAX_BLACK_VALUE = 0.35  # max(R, G, B) / 255 below this is black, whatever the hue
RELATION_MARGIN = 0.1 * IMAGE_SIZE  # px: "left of" needs the centres this far apart
# (fill, solidity, symmetry) of each shape: medians over clean renders of 12-36 px objects
# (see `quarter_turn_overlap` for symmetry).
SHAPE_FEATURES = {
    "circle": np.array([0.78, 0.95, 0.96]),
    "square": np.array([1.0, 1.0, 1.0]),
    "triangle": np.array([0.53, 0.93, 0.47]),
    "star": np.array([0.43, 0.60, 0.55]),
    "cross": np.array([0.58, 0.74, 0.95]),
}
# Solidity counts half: blur fills a small star's notches and noise frays a square's edges, and
# both move solidity most. With these weights 99% of degraded single-object renders (Gaussian
# blur of 0.75 px and/or noise of sd 0.1) are still named right, and all clean ones.
FEATURE_WEIGHTS = np.array([1.0, 0.5, 1.0])


@dataclass(frozen=True)
class Detection:
    """One object found in an image; coordinates in px of the 64 px image."""

    shape: str
    color: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area: int
    fill: float
    solidity: float
    symmetry: float

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass
class SampleScore:
    """The verdict on one image: each claim, and whether all hold."""

    category: str
    claims: list[bool]
    detections: list[Detection]

    @property
    def correct(self) -> bool:
        return all(self.claims)


def share(values) -> float:
    """The mean of booleans (the share that hold) or numbers, as a float; NaN when there are none."""
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


@dataclass
class Report:
    """Scores of a batch, each with a `correct` verdict; `accuracy` is the share that are correct."""

    scores: list = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return share(s.correct for s in self.scores)


@dataclass
class ShapesReport(Report):
    """Scores (`SampleScore`) of a batch of images: overall and per-category accuracy (GenEval's summary)."""

    @property
    def per_category(self) -> dict[str, float]:
        categories = sorted({s.category for s in self.scores})
        return {c: float(np.mean([s.correct for s in self.scores if s.category == c])) for c in categories}

    @property
    def geneval_score(self) -> float:
        """Mean of the per-category accuracies, so each category weighs the same."""
        return share(self.per_category.values())


def as_uint8_images(images, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Images as (N, H, W, 3) uint8 from uint8 or float arrays/tensors, (N, 3, H, W) or (N, H, W, 3).

    Floats are mapped from `value_range` (the models' [-1, 1] by default); a single image
    (no batch axis) is accepted too.
    """
    if hasattr(images, "detach"):  # a torch tensor, without importing torch
        images = (
            images.detach().float().cpu().numpy() if images.dtype.is_floating_point else images.cpu().numpy()
        )
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise SwdError(f"images: expected (N, 3, H, W) or (N, H, W, 3), got shape {tuple(x.shape)}")
    if x.shape[-1] != 3:
        x = x.transpose(0, 2, 3, 1)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise SwdError(f"images: expected uint8 or float values, got {x.dtype}")
    lo, hi = value_range
    x = (x.astype(np.float32) - lo) / (hi - lo)
    return (np.clip(np.nan_to_num(x, nan=1.0), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def to_score_size(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image resized to 64 x 64 (area-averaged when shrinking)."""
    if image.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    from PIL import Image

    shrink = image.shape[0] > IMAGE_SIZE
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image, "RGB").resize((IMAGE_SIZE, IMAGE_SIZE), method))


_COLOR_NAMES = list(COLORS)


def _hue_saturation_value(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV of uint8 RGB (..., 3): hue in degrees [0, 360), saturation and value in [0, 1]."""
    rgb = image.astype(np.float32) * np.float32(1 / 255)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi, lo = rgb.max(-1), rgb.min(-1)
    chroma = hi - lo
    safe = np.maximum(chroma, np.float32(1e-6))
    sector = np.where(hi == r, (g - b) / safe, np.where(hi == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = np.where(sector < 0, sector + 6, sector) * np.float32(60)
    saturation = chroma / np.maximum(hi, np.float32(1e-6))
    return hue, saturation, hi


def _hue_bins() -> tuple[np.ndarray, np.ndarray]:
    """Bin edges halfway between neighbouring palette hues (circularly), and each bin's colour index."""
    chromatic = [c for c in COLORS if c != "black"]
    hues = np.array(
        [_hue_saturation_value(np.array(COLORS[c], np.uint8))[0] for c in chromatic], dtype=np.float64
    )
    order = np.argsort(hues)
    sorted_hues = hues[order]
    edges = (sorted_hues + np.roll(sorted_hues, -1) + np.r_[np.zeros(len(hues) - 1), 360.0]) / 2 % 360.0
    # digitize over edges: bin i (1..k-1) lies between edges[i-1] and edges[i]; bin 0 and bin k
    # are the wrap-around bin of the colour whose hue straddles 0 degrees.
    edge_order = np.argsort(edges)
    edges = edges[edge_order]
    owners = [int(order[(i + 1) % len(hues)]) for i in edge_order]  # colour just above each edge
    bins = np.array([owners[-1], *owners])
    return edges.astype(np.float32), np.array([list(COLORS).index(chromatic[i]) for i in bins])


_HUE_EDGES, _HUE_BIN_COLORS = _hue_bins()


def color_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel palette index into `COLORS` (..., H, W), or -1 for background and unsure pixels."""
    hue, saturation, value = _hue_saturation_value(image)
    labels = np.where(saturation >= MIN_SATURATION, _HUE_BIN_COLORS[np.digitize(hue, _HUE_EDGES)], -1)
    return np.where(value < MAX_BLACK_VALUE, _COLOR_NAMES.index("black"), labels)


def connected_components(classes: np.ndarray) -> np.ndarray:
    """4-connected components of equal-valued pixels of an int (H, W) map; pixels < 0 are ignored.

    Returns component ids (H, W), -1 on ignored pixels. Each pixel starts with its own flat index
    and repeatedly takes the smallest id among its same-class neighbours, then jumps to its id's
    id; each component ends up named by its smallest index. All colours are labelled in one go.
    """
    h, w = classes.shape
    none = h * w
    valid = classes >= 0
    ids = np.where(valid, np.arange(none, dtype=np.int32).reshape(h, w), np.int32(none))
    same_down = valid[1:] & (classes[1:] == classes[:-1])  # pixel (y+1, x) joins (y, x)
    same_right = valid[:, 1:] & (classes[:, 1:] == classes[:, :-1])
    while True:
        smallest = ids.copy()
        np.minimum(smallest[1:], np.where(same_down, ids[:-1], none), out=smallest[1:])
        np.minimum(smallest[:-1], np.where(same_down, ids[1:], none), out=smallest[:-1])
        np.minimum(smallest[:, 1:], np.where(same_right, ids[:, :-1], none), out=smallest[:, 1:])
        np.minimum(smallest[:, :-1], np.where(same_right, ids[:, 1:], none), out=smallest[:, :-1])
        flat = smallest.ravel()
        inside = flat < none
        flat[inside] = flat[flat[inside]]
        if np.array_equal(smallest, ids):
            return np.where(valid, ids, -1)
        ids = smallest


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The boolean mask with every background region that does not reach the border filled in."""
    outside = np.pad(np.where(mask, -1, 0), 1, constant_values=0)
    ids = connected_components(outside)
    return ~(ids == ids[0, 0])[1:-1, 1:-1]


def convex_hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the pixels' squares (px^2), from the corners at each row's ends.

    Corners in the middle of a vertical run of equal row ends are collinear and left out.
    """
    rows = np.flatnonzero(mask.any(1))
    left = mask[rows].argmax(1)
    right = mask.shape[1] - mask[rows, ::-1].argmax(1)
    points = []
    for ends in (left, right):
        top = np.r_[True, ends[1:] != ends[:-1]]  # a run of equal ends starts here
        bottom = np.r_[ends[:-1] != ends[1:], True]  # ... or ends here
        points += zip(ends[top].tolist(), rows[top].tolist())
        points += zip(ends[bottom].tolist(), (rows[bottom] + 1).tolist())
    hull = _monotone_chain(sorted(set(points)))
    if len(hull) < 3:
        return float(mask.sum())
    x, y = np.asarray(hull, dtype=np.float64).T
    return 0.5 * abs(float(x @ np.r_[y[1:], y[:1]] - y @ np.r_[x[1:], x[:1]]))


def _monotone_chain(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Andrew's monotone chain over sorted points: the hull's vertices, counter-clockwise."""

    def half(seq):
        chain: list[tuple[int, int]] = []
        for px, py in seq:
            while len(chain) >= 2:
                (ox, oy), (ax, ay) = chain[-2], chain[-1]
                if (ax - ox) * (py - oy) - (ay - oy) * (px - ox) > 0:
                    break
                chain.pop()
            chain.append((px, py))
        return chain[:-1]

    return half(points) + half(reversed(points))


def quarter_turn_overlap(mask: np.ndarray) -> float:
    """IoU of a cropped mask with itself turned by 90 degrees, best over 1 px shifts.

    Near 1 for the four-fold symmetric circle, square and cross, near 0.6 for a star and 0.4
    for a triangle: it tells a small star from a small cross where fill and solidity blur. The
    shifts forgive a small shape whose arms fell on the pixel grid one pixel off centre.
    """
    h, w = mask.shape
    side = max(h, w) + 2
    square = np.zeros((side, side), dtype=bool)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = mask
    turned = np.rot90(square)
    best = 0.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = np.roll(turned, (dy, dx), axis=(0, 1))
            best = max(best, (square & moved).sum() / max((square | moved).sum(), 1))
    return float(best)


def classify_shape(fill: float, solidity: float, symmetry: float) -> str:
    """The shape whose clean (fill, solidity, symmetry) is nearest, in `FEATURE_WEIGHTS` units."""
    features = np.array([fill, solidity, symmetry])
    return min(
        SHAPE_FEATURES, key=lambda s: float((((features - SHAPE_FEATURES[s]) * FEATURE_WEIGHTS) ** 2).sum())
    )


def measure(mask: np.ndarray, color: str, offset: tuple[int, int] = (0, 0)) -> Detection:
    """The detection of one component, given as a boolean mask cropped to its bbox at `offset` (x, y)."""
    if _may_have_holes(mask):
        mask = fill_holes(mask)
    h, w = mask.shape
    area = int(mask.sum())
    fill = area / mask.size
    solidity = min(area / convex_hull_area(mask), 1.0)
    symmetry = quarter_turn_overlap(mask)
    x0, y0 = offset
    return Detection(
        classify_shape(fill, solidity, symmetry),
        color,
        (x0, y0, x0 + w, y0 + h),
        area,
        round(fill, 4),
        round(solidity, 4),
        round(symmetry, 4),
    )


def _may_have_holes(mask: np.ndarray) -> bool:
    """Cheap necessary condition for a hole: an empty pixel with the object on all four sides."""

    def between(m: np.ndarray, axis: int) -> np.ndarray:
        before = np.maximum.accumulate(m, axis=axis)
        after = np.flip(np.maximum.accumulate(np.flip(m, axis), axis=axis), axis)
        return before & after

    return bool((~mask & between(mask, 0) & between(mask, 1)).any())


def detect_batch(images: np.ndarray) -> list[list[Detection]]:
    """Detections for a batch (N, H, W, 3) uint8, each image's largest first.

    Colours and components are computed for the whole batch at once (images stacked with a
    blank row between them), which is most of the cost.
    """
    batch = np.stack([to_score_size(image) for image in images])
    n, h, w = batch.shape[:3]
    labels = np.full((n, h + 1, w), -1, dtype=np.int64)
    labels[:, :h] = color_labels(batch)
    stacked = labels.reshape(n * (h + 1), w)
    components = connected_components(stacked)
    ids, sizes = np.unique(components.ravel(), return_counts=True)
    found: list[list[Detection]] = [[] for _ in range(n)]
    for component, size in zip(ids, sizes):
        if component < 0 or size < MIN_AREA:
            continue
        row, col = divmod(int(component), w)  # an id is its component's first pixel
        image = row // (h + 1)
        window = components[image * (h + 1) : image * (h + 1) + h]
        ys, xs = np.nonzero(window == component)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        mask = window[y0:y1, x0:x1] == component
        found[image].append(measure(mask, _COLOR_NAMES[stacked[row, col]], (int(x0), int(y0))))
    return [sorted(d, key=lambda d: -d.area) for d in found]


def detect_objects(image: np.ndarray) -> list[Detection]:
    """Every object of a palette colour in one (H, W, 3) uint8 image, largest first."""
    return detect_batch(image[None])[0]


def _matches(d: Detection, shape: str, color: str | None) -> bool:
    return d.shape == shape and (color is None or d.color == color)


def check_claim(claim: Claim, detections: Sequence[Detection]) -> bool:
    """Whether one claim holds for the detected objects."""
    if claim.kind == "present":
        return any(_matches(d, claim.shape, claim.color) for d in detections)
    if claim.kind == "count":
        return sum(_matches(d, claim.shape, claim.color) for d in detections) == claim.count
    if claim.kind == "relation":
        subjects = [d for d in detections if _matches(d, claim.shape, claim.color)]
        others = [d for d in detections if _matches(d, claim.other_shape, claim.other_color)]
        return any(
            satisfies(a, claim.relation, b, RELATION_MARGIN) for a in subjects for b in others if a is not b
        )
    raise SwdError(f"claim.kind: unknown {claim.kind!r}; expected present, count or relation")


def score_shapes(
    images, samples: Sequence[ShapeSample], value_range: tuple[float, float] = (-1.0, 1.0)
) -> ShapesReport:
    """Score generated images against the samples whose captions produced them.

    `images`: uint8 or float, numpy or torch, (N, 3, H, W) or (N, H, W, 3), any square size;
    floats are read in `value_range`. Returns per-image verdicts, `accuracy` and `per_category`.
    """
    batch = as_uint8_images(images, value_range)
    if len(batch) != len(samples):
        raise SwdError(f"samples: {len(samples)} samples for {len(batch)} images; give one per image")
    scores = []
    for start in range(0, len(batch), 256):  # bounded memory for the batched labelling
        chunk = detect_batch(batch[start : start + 256])
        for detections, sample in zip(chunk, samples[start : start + 256]):
            scores.append(
                SampleScore(sample.category, [check_claim(c, detections) for c in sample.claims], detections)
            )
    return ShapesReport(scores)
