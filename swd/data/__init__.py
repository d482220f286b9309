"""Offline testbed data: the `emoji` and `shapes` image sets, the shapes scorer and MiniLM text.

Both image sets are stored the same way, in one `.npz` file per set (no pickles):

- `png`: every 64 px RGB image as PNG bytes, concatenated (uint8), with `offsets` (int64, N + 1)
  marking where each one starts. PNG keeps the emoji set at a size that can travel to a GPU
  machine; decoding ~10k small PNGs takes about a second.
- `manifest`: UTF-8 JSON bytes (uint8) with the set's summary (sources, licenses, counts, build
  settings) under `"summary"` and one record per image under `"records"`; every record has at least
  `caption` and `split` ("train" or "heldout").

`ImageSet` is the loaded form, and `load_emoji` / `load_shapes` are the entry points. The heavier
modules (Pillow renderers, transformers) load on first use of the names re-exported below.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swd.errors import SwdError

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 64
SPLITS = ("train", "heldout")
HELDOUT_PER_MILLE = 100  # about 10% of concepts are held out
# Held-out prompt set (what evaluation samples) -> the image set it holds out (what training reads).
PROMPT_DATA = {"emoji-heldout": "emoji", "shapes": "shapes"}


def default_cache_dir() -> Path:
    """`$SWD_CACHE`, else `.cache/swd` in the source checkout (when running from one), else in cwd."""
    env = os.environ.get("SWD_CACHE")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    root = repo if (repo / "pyproject.toml").exists() or (repo / ".git").exists() else Path.cwd()
    return root / ".cache" / "swd"


def concept_split(concept: str) -> str:
    """Deterministic split of a concept (an emoji name, a shapes caption): "heldout" for ~10%.

    A hash, not a random draw, so the split never depends on which sources were installed or
    how many items were built.
    """
    digest = hashlib.sha256(concept.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % 1000 < HELDOUT_PER_MILLE else "train"


@dataclass
class ImageSet:
    """Captioned 64 px images of one dataset, with their per-image records and the set's summary."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB on white
    records: list[dict[str, Any]]  # one per image; always has "caption" and "split"
    summary: dict[str, Any]  # sources, licenses, counts, build settings

    def __post_init__(self) -> None:
        assert len(self.images) == len(self.records), "one record per image"

    def __len__(self) -> int:
        return len(self.records)

    @property
    def captions(self) -> list[str]:
        return [r["caption"] for r in self.records]

    @property
    def splits(self) -> list[str]:
        return [r["split"] for r in self.records]

    def select(self, split: str | None) -> ImageSet:
        """The images of one split ("train" or "heldout"); None keeps everything."""
        if split is None:
            return self
        if split not in SPLITS:
            raise SwdError(f"split: must be one of {', '.join(SPLITS)} or None, got {split!r}")
        keep = [i for i, r in enumerate(self.records) if r["split"] == split]
        return ImageSet(self.images[keep], [self.records[i] for i in keep], self.summary)

    def tensors(self) -> torch.Tensor:
        """Images as float32 (N, 3, H, W) in [-1, 1], the layout and range the models train on."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2)
        return x.float().div_(127.5).sub_(1.0)


def write_image_set(path: Path, images: np.ndarray, records: list[dict], summary: dict) -> Path:
    """Store images as PNGs plus the JSON manifest in one `.npz`; written atomically."""
    from PIL import Image

    blobs = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format="PNG")
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    png = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
    manifest = json.dumps({"summary": summary, "records": records}, ensure_ascii=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, png=png, offsets=offsets, manifest=np.frombuffer(manifest.encode(), np.uint8))
    tmp.replace(path)
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest alone ({"summary", "records"}), without decoding any image."""
    with _open_npz(path) as z:
        return json.loads(z["manifest"].tobytes().decode("utf-8"))


def read_image_set(path: Path) -> ImageSet:
    """Load a file written by `write_image_set`."""
    from PIL import Image

    with _open_npz(path) as z:
        manifest = json.loads(z["manifest"].tobytes().decode("utf-8"))
        png, offsets = z["png"], z["offsets"]
    images = [
        np.asarray(Image.open(io.BytesIO(png[a:b].tobytes())).convert("RGB"))
        for a, b in itertools.pairwise(offsets.tolist())
    ]
    size = manifest["summary"].get("size", IMAGE_SIZE)
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return ImageSet(stack, manifest["records"], manifest["summary"])


def _open_npz(path: Path):
    path = Path(path)
    if not path.is_file():
        raise SwdError(f"dataset: no file at {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SwdError(f"dataset: {path} is not a dataset file ({e})") from None


# Re-exports, imported on first use so that `import swd.data` stays light (no transformers).
_LAZY = {
    "build_emoji": "swd.data.emoji",
    "load_emoji": "swd.data.emoji",
    "emoji_name": "swd.data.emoji",
    "build_shapes": "swd.data.shapes",
    "load_shapes": "swd.data.shapes",
    "generate_shapes": "swd.data.shapes",
    "render_shapes": "swd.data.shapes",
    "ShapeSample": "swd.data.shapes",
    "score_shapes": "swd.data.scoring",
    "detect_objects": "swd.data.scoring",
    "TextEncoder": "swd.data.text",
    "CaptionEmbeddings": "swd.data.text",
    "encode_captions": "swd.data.text",
    "empty_prompt": "swd.data.text",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swd.data' has no attribute {name!r}")


__all__ = [
    "IMAGE_SIZE",
    "ImageSet",
    "PROMPT_DATA",
    "concept_split",
    "default_cache_dir",
    "read_image_set",
    "read_manifest",
    "write_image_set",
]
__all__ += list(_LAZY)
