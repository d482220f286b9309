"""The `emoji` dataset: named emoji in up to three art styles, 64 px RGB on white.

Sources (each optional; the build skips a missing one with a warning and fails if none is there):

- `noto`: Debian's `fonts-noto-color-emoji` (Apache-2.0 art), rendered with Pillow. The font's
  bitmaps exist only at size 109 (136 x 128 px); we render there and downscale.
- `fluent`: npm `@iconify-json/fluent-emoji-flat` (MIT, Microsoft's Fluent Emoji flat SVGs),
  rasterised with `resvg-py`.
- `twitter`: npm `emoji-datasource-twitter` (Twemoji art, CC-BY-4.0), ready 64 px PNGs.

A concept is one emoji sequence; it is keyed by its code points without U+FE0F (the three
sources disagree on where variation selectors go) and named by the PyPI `emoji` package in CLDR
form ("woman cook: medium-dark skin tone"). Captions are `"{style} style: {name}"`, style first so
that truncation to a few tokens cuts the name's tail, never the style. The held-out split is by
concept name, so every style of a held-out emoji is held out together.

Every style keeps its own framing (the glyph's box, the SVG's view box, the PNG's canvas), scaled
so that a full-size emoji spans about 56 of the 64 px in all three, and centred: small emoji
stay small.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from swd.data import IMAGE_SIZE, ImageSet, concept_split, default_cache_dir, read_image_set, write_image_set
from swd.errors import SwdError

CAPTION_TEMPLATE = "{style} style: {name}"
FILE_NAME = "emoji-64.npz"

NOTO_FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
)
NOTO_SIZE = 109  # the only size with bitmaps in NotoColorEmoji (CBDT)
NOTO_BOX = 136  # width of a glyph bitmap at that size; the square canvas a glyph is centred in
FLUENT_PACKAGE = "@iconify-json/fluent-emoji-flat"
TWITTER_PACKAGE = "emoji-datasource-twitter"
RENDER_SCALE = 2  # SVGs are rasterised at 128 px and downscaled: finer antialiasing than at 64
# Fluent's view box and Twemoji's canvas are filled edge to edge, while a Noto glyph fills about
# 87% of its 136 px box; framing the former in a box 64/56 of their size gives all three styles
# the same ~56 px face in a 64 px image.
EDGE_TO_EDGE_FRAME = 64 / 56
MIN_COVERAGE = 0.01  # a render whose opaque area is below 1% of the canvas counts as blank

_TONES = r"(?:light|medium-light|medium|medium-dark|dark) skin tone"
_HAIR = r"(?:red hair|curly hair|white hair|bald)"
_TRAILING_MODIFIER = re.compile(rf"^(?P<base>.+?)[ ,]+(?P<mod>{_TONES}|{_HAIR})$")


@dataclass(frozen=True)
class EmojiConcept:
    """One emoji sequence, named."""

    key: str  # code points without U+FE0F, lowercase hex joined by "-", e.g. "1f469-1f3fe-200d-1f373"
    text: str  # the fully-qualified sequence
    name: str  # CLDR-style name, e.g. "woman cook: medium-dark skin tone"


@dataclass(frozen=True)
class EmojiRecord:
    """One stored image: which concept, in which style, its caption and its split."""

    key: str
    emoji: str
    name: str
    style: str
    caption: str
    split: str


@dataclass(frozen=True)
class Source:
    """One art style: where its images come from and how to render one concept in it."""

    style: str
    license: str
    origin: str
    has: Callable[[EmojiConcept], bool]  # whether the source has art for the concept at all
    render: Callable[[EmojiConcept], np.ndarray | None]  # (64, 64, 3) uint8, or None if it draws blank


def sequence_key(text: str) -> str:
    """The concept key of an emoji string: its code points in hex, U+FE0F dropped."""
    return "-".join(f"{ord(c):x}" for c in text if ord(c) != 0xFE0F)


def emoji_name(text: str) -> str:
    """CLDR-style English name of an emoji from the `emoji` package, e.g. "flag: Japan".

    The package gives ":woman_cook_medium-dark_skin_tone:"; CLDR puts a colon before the
    modifiers (skin tones, hair) and names flags and keycaps "flag: X" / "keycap: X".
    """
    emoji = _emoji_package()
    data = emoji.EMOJI_DATA.get(text) or emoji.EMOJI_DATA.get(text + "\ufe0f")
    if data is None:
        raise SwdError(f"emoji: {text!r} is not an emoji the `emoji` package knows")
    return _cldr_form(data["en"], text)


def _cldr_form(package_name: str, text: str) -> str:
    name = package_name.strip(":").replace("_", " ")
    points = [ord(c) for c in text]
    if all(0x1F1E6 <= p <= 0x1F1FF for p in points) or (points[0] == 0x1F3F4 and len(points) > 2):
        return f"flag: {name}"  # regional-indicator pairs and tag-sequence flags (England, ...)
    if name.startswith("keycap "):
        return "keycap: " + name[len("keycap ") :]
    has_modifier = any(0x1F3FB <= p <= 0x1F3FF or 0x1F9B0 <= p <= 0x1F9B3 for p in points)
    modifiers = []
    while has_modifier and (m := _TRAILING_MODIFIER.match(name)):
        name, modifiers = m["base"], [m["mod"], *modifiers]
    return f"{name}: {', '.join(modifiers)}" if modifiers else name


def emoji_concepts() -> dict[str, EmojiConcept]:
    """All fully-qualified emoji of the `emoji` package (no bare skin-tone or hair swatches), by key."""
    emoji = _emoji_package()
    fully_qualified = emoji.STATUS["fully_qualified"]
    concepts = {}
    for text, data in emoji.EMOJI_DATA.items():
        if data["status"] != fully_qualified:
            continue
        key = sequence_key(text)
        concepts[key] = EmojiConcept(key, text, _cldr_form(data["en"], text))
    return concepts


def caption(style: str, name: str) -> str:
    return CAPTION_TEMPLATE.format(style=style, name=name)


def _emoji_package():
    try:
        import emoji
    except ImportError:
        raise SwdError(
            "emoji: the PyPI package `emoji` (emoji names) is not installed; run scripts/install_data_deps.sh"
        ) from None
    return emoji


def fit_on_white(rgba: Image.Image, box: int, size: int = IMAGE_SIZE) -> np.ndarray | None:
    """Centre the opaque content of `rgba` in a `box`-px white square, downscale to `size`.

    Returns None for a blank render (a glyph the font lacks draws nothing). The content keeps its
    scale relative to `box` (grown only if it overflows), so small emoji stay small, and is
    centred (the sources disagree on baselines).
    """
    if (np.asarray(rgba.getchannel("A")) > 127).sum() < MIN_COVERAGE * box * box:
        return None
    x0, y0, x1, y1 = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    side = max(box, x1 - x0, y1 - y0)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba.crop((x0, y0, x1, y1)), ((side - (x1 - x0)) // 2, (side - (y1 - y0)) // 2))
    # Compositing on white before resizing keeps edges from picking up the transparent black.
    rgb = canvas.convert("RGB")
    return np.asarray(
        rgb.resize((size, size), Image.Resampling.LANCZOS if side > size else Image.Resampling.BICUBIC)
    )


def find_noto_font() -> Path | None:
    candidates = [os.environ.get("SWD_NOTO_FONT", ""), *NOTO_FONT_PATHS]
    return next((Path(p) for p in candidates if p and Path(p).is_file()), None)


def find_npm_package(package: str) -> Path | None:
    """`<dir>/node_modules/<package>` under $SWD_NPM_DIR, the cache's npm folder, or ./.cache/npm."""
    roots = [
        os.environ.get("SWD_NPM_DIR", ""),
        default_cache_dir().parent / "npm",
        Path.cwd() / ".cache" / "npm",
    ]
    for root in roots:
        if root and (Path(root) / "node_modules" / package / "package.json").is_file():
            return Path(root) / "node_modules" / package
    return None


def noto_source() -> Source | str:
    """The Noto style, or the reason it is unavailable."""
    path = find_noto_font()
    if path is None:
        return "fonts-noto-color-emoji is not installed (no NotoColorEmoji.ttf)"
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(str(path), size=NOTO_SIZE)
    one_glyph = font.getlength("\U0001f600")

    def render(concept: EmojiConcept) -> np.ndarray | None:
        # Without a ligature (an old font, or Pillow without raqm) a ZWJ sequence draws as several
        # glyphs side by side: that is not this emoji, so it is skipped.
        if font.getlength(concept.text) > 1.5 * one_glyph:
            return None
        canvas = Image.new("RGBA", (2 * NOTO_BOX, 2 * NOTO_BOX), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text(
            (NOTO_BOX // 2, NOTO_BOX // 2), concept.text, font=font, embedded_color=True
        )
        return fit_on_white(canvas, NOTO_BOX)

    # A font answers "do you have it" only by drawing: a missing glyph is a blank render.
    return Source("noto", "Apache-2.0", f"Debian fonts-noto-color-emoji ({path})", lambda c: True, render)


def fluent_source() -> Source | str:
    """The Fluent flat style, or the reason it is unavailable."""
    root = find_npm_package(FLUENT_PACKAGE)
    if root is None:
        return f"npm {FLUENT_PACKAGE} is not installed (run scripts/install_data_deps.sh)"
    if importlib.util.find_spec("resvg_py") is None:
        return "the PyPI package resvg-py (SVG rasteriser) is not installed"
    import resvg_py

    icons = json.loads((root / "icons.json").read_text())
    by_key = json.loads((root / "chars.json").read_text())  # key (no fe0f) -> icon name
    default_w, default_h = icons.get("width", 16), icons.get("height", 16)

    def svg_of(name: str) -> str | None:
        icon, flip = icons["icons"].get(name), False
        if icon is None and name in icons.get("aliases", {}):
            alias = icons["aliases"][name]
            icon, flip = icons["icons"].get(alias["parent"]), bool(alias.get("hFlip"))
        if icon is None:
            return None
        w, h = icon.get("width", default_w), icon.get("height", default_h)
        body = f'<g transform="matrix(-1 0 0 1 {w} 0)">{icon["body"]}</g>' if flip else icon["body"]
        px = RENDER_SCALE * IMAGE_SIZE
        head = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{px}" height="{px}">'
        return f"{head}{body}</svg>"

    def render(concept: EmojiConcept) -> np.ndarray | None:
        svg = svg_of(by_key.get(concept.key, ""))
        if svg is None:
            return None
        png = resvg_py.svg_to_bytes(svg_string=svg)
        rgba = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
        return fit_on_white(rgba, round(RENDER_SCALE * IMAGE_SIZE * EDGE_TO_EDGE_FRAME))

    def has(concept: EmojiConcept) -> bool:
        return concept.key in by_key

    return Source("fluent", "MIT", f"npm {FLUENT_PACKAGE} (Microsoft Fluent Emoji flat)", has, render)


def twitter_source() -> Source | str:
    """The Twemoji style, or the reason it is unavailable."""
    root = find_npm_package(TWITTER_PACKAGE)
    if root is None:
        return f"npm {TWITTER_PACKAGE} is not installed (run scripts/install_data_deps.sh)"
    files = {}
    for entry in json.loads((root / "emoji.json").read_text()):
        for item in [entry, *entry.get("skin_variations", {}).values()]:
            if item.get("has_img_twitter"):
                files[_key_of_unified(item["unified"])] = root / "img" / "twitter" / "64" / item["image"]

    def render(concept: EmojiConcept) -> np.ndarray | None:
        path = files[concept.key]
        if not path.is_file():
            return None
        rgba = Image.open(path).convert("RGBA")
        return fit_on_white(rgba, round(max(rgba.size) * EDGE_TO_EDGE_FRAME))

    def has(concept: EmojiConcept) -> bool:
        return concept.key in files

    return Source("twitter", "CC-BY-4.0", f"npm {TWITTER_PACKAGE} (Twemoji 64 px PNGs)", has, render)


def _key_of_unified(unified: str) -> str:
    return "-".join(p.lower() for p in unified.split("-") if p.lower() != "fe0f")


SOURCES: dict[str, Callable[[], Source | str]] = {
    "noto": noto_source,
    "fluent": fluent_source,
    "twitter": twitter_source,
}


def available_sources(styles: Iterable[str] | None = None) -> tuple[list[Source], dict[str, str]]:
    """The sources that are installed, and why each other one is not. Warns for every missing one."""
    styles = list(SOURCES) if styles is None else list(styles)
    unknown = [s for s in styles if s not in SOURCES]
    if unknown:
        raise SwdError(f"sources: unknown style {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    found, missing = [], {}
    for style in styles:
        source = SOURCES[style]()
        if isinstance(source, str):
            missing[style] = source
            warnings.warn(f"emoji source {style!r} skipped: {source}", stacklevel=2)
        else:
            found.append(source)
    if not found:
        raise SwdError(
            "sources: no emoji source is installed ("
            + "; ".join(f"{k}: {v}" for k, v in missing.items())
            + "); run scripts/install_data_deps.sh"
        )
    return found, missing


def select_concepts(
    concepts: dict[str, EmojiConcept], only: Iterable[str] | None, limit: int | None
) -> list[EmojiConcept]:
    """Concepts in key order, optionally restricted to given emoji strings and/or the first `limit`."""
    chosen = sorted(concepts.values(), key=lambda c: c.key)
    if only is not None:
        wanted = {sequence_key(t) for t in only}
        unknown = wanted - concepts.keys()
        if unknown:
            raise SwdError(f"only: {min(unknown)} is not a fully-qualified emoji of the `emoji` package")
        chosen = [c for c in chosen if c.key in wanted]
    if limit is not None:
        if limit < 1:
            raise SwdError(f"limit: must be a positive number of concepts, got {limit}")
        chosen = chosen[:limit]
    return chosen


def render_all(
    sources: list[Source], concepts: list[EmojiConcept], progress: bool = True
) -> Iterator[tuple[EmojiRecord, np.ndarray | None]]:
    """Render every concept each source has, yielding its record and image (None when blank)."""
    from tqdm.auto import tqdm

    jobs = [(s, c) for s in sources for c in concepts if s.has(c)]
    for source, concept in tqdm(jobs, desc="emoji", unit="img", disable=not progress):
        record = EmojiRecord(
            key=concept.key,
            emoji=concept.text,
            name=concept.name,
            style=source.style,
            caption=caption(source.style, concept.name),
            split=concept_split(concept.name),
        )
        yield record, source.render(concept)


def build_emoji(
    out: str | Path | None = None,
    limit: int | None = None,
    only: Iterable[str] | None = None,
    styles: Iterable[str] | None = None,
    progress: bool = True,
) -> Path:
    """Render the emoji set and write it to `out` (a directory, or a `.npz` path); returns the file.

    `limit` keeps the first N concepts in key order and `only` a given list of emoji (both for
    quick tests); `styles` picks sources among noto, fluent, twitter (default: all installed).
    """
    start = time.perf_counter()
    path = _resolve_path(
        out, FILE_NAME if limit is None and only is None else f"emoji-64-subset{limit or ''}.npz"
    )
    sources, missing = available_sources(styles)
    concepts = select_concepts(emoji_concepts(), only, limit)
    images, records, blank = [], [], {s.style: 0 for s in sources}
    for record, image in render_all(sources, concepts, progress):
        if image is None:
            blank[record.style] += 1
            continue
        images.append(image)
        records.append(asdict(record))
    summary = _summary(sources, missing, records, blank, len(concepts), time.perf_counter() - start)
    stack = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return write_image_set(path, stack, records, summary)


def _summary(sources, missing, records, blank, n_concepts, seconds) -> dict:
    per_style = {s.style: sum(r["style"] == s.style for r in records) for s in sources}
    return {
        "name": "emoji",
        "size": IMAGE_SIZE,
        "caption_template": CAPTION_TEMPLATE,
        "split_rule": "sha256(concept name) % 1000 < 100 -> heldout",
        "sources": {
            s.style: {
                "license": s.license,
                "origin": s.origin,
                "images": per_style[s.style],
                "blank_skipped": blank[
                    s.style
                ],  # has the concept but draws it blank (noto: or not as one glyph)
                "absent": n_concepts - per_style[s.style] - blank[s.style],
            }
            for s in sources
        },
        "missing_sources": missing,
        "counts": {
            "images": len(records),
            "concepts_tried": n_concepts,
            "concepts": len({r["key"] for r in records}),
            "train": sum(r["split"] == "train" for r in records),
            "heldout": sum(r["split"] == "heldout" for r in records),
            "heldout_concepts": len({r["key"] for r in records if r["split"] == "heldout"}),
        },
        "emoji_package": _emoji_package().__version__,
        "build_seconds": round(seconds, 1),
    }


def _resolve_path(out: str | Path | None, file_name: str) -> Path:
    out = default_cache_dir() if out is None else Path(out)
    return out if out.suffix == ".npz" else out / file_name


def load_emoji(path: str | Path | None = None, split: str | None = None) -> ImageSet:
    """The built emoji set (default: `<cache>/emoji-64.npz`); `split` = "train", "heldout" or None.

    `ImageSet.tensors()` gives (N, 3, 64, 64) float in [-1, 1], `.captions` and `.splits` the text
    and split of each, `.records` the concept key, emoji, name and style.
    """
    file = _resolve_path(None if path is None else Path(path), FILE_NAME)
    if not file.is_file():
        raise SwdError(f"path: no emoji set at {file}; build it with `swd data build emoji`")
    return read_image_set(file).select(split)
