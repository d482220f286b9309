"""Training images with precomputed prompt embeddings, for distilling SD3 / FLUX teachers.

SD3.5 and FLUX condition on CLIP + T5 encoders that are larger than a LoRA student's whole
training state. They run ONCE, in `swd data encode-prompts`, and are freed before training; the
trainer only ever reads their outputs from disk.

File layout (one safetensors file, or a folder of `shard-NNNNN.safetensors` files whose rows are
concatenated in name order):

| tensor | shape | dtype |
|---|---|---|
| `images` | (N, H, W, 3) | uint8 |
| `prompt_embeds` | (N, L, D) | bf16 / fp16 / fp32 |
| `pooled` | (N, P) | same |
| `empty_prompt_embeds`, `empty_pooled` | (1, L, D), (1, P) | the empty prompt, CFG's unconditional input |
| `heldout_prompt_embeds`, `heldout_pooled` | (H, L, D), (H, P) | optional, first shard only: prompts for sample grids |

Header metadata (strings): `format` = "swd-prompt-embeds/1", `family` (sd3 | flux), `captions` and
`heldout_captions` (JSON lists), `pipeline`, `max_sequence_length`.

Rows are read lazily through safetensors' memory map, so a 200k-image set never has to fit in RAM.

    swd data encode-prompts --pipeline models/sd3.5-medium --images imgs/ --captions caps.txt --out train.safetensors
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from swd.errors import SwdError
from swd.models.base import TextCondition

FORMAT = "swd-prompt-embeds/1"
SHARD_PATTERN = "shard-{:05d}.safetensors"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# captions -> (prompt_embeds (B, L, D), pooled (B, P)), on the CPU.
PromptEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


# Reading.


class _Shard:
    """One open safetensors file: its row count and lazy row access."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        try:
            self.file = safe_open(str(path), framework="pt")
        except Exception as err:  # safetensors raises several error types for a bad file
            raise SwdError(f"data.path: cannot read {path} as safetensors ({type(err).__name__}: {err})") from None
        self.path = path
        self.meta = self.file.metadata() or {}
        if self.meta.get("format") != FORMAT:
            raise SwdError(f"data.path: {path} is not a prompt-embeddings file (format {self.meta.get('format')!r}, "
                           f"expected {FORMAT!r}; write one with `swd data encode-prompts`)")
        self.keys = set(self.file.keys())
        for key in ("images", "prompt_embeds", "pooled", "empty_prompt_embeds", "empty_pooled"):
            if key not in self.keys:
                raise SwdError(f"data.path: {path} lacks the tensor {key!r}")
        self.rows = self.file.get_slice("images").get_shape()[0]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.file.get_slice(key).get_shape())

    def rows_of(self, key: str, rows: Sequence[int]) -> torch.Tensor:
        """Rows `rows` (local indices) of tensor `key`, read one contiguous run at a time."""
        sl = self.file.get_slice(key)
        parts, start = [], None
        for k, r in enumerate(rows):
            if start is None:
                start, end = r, r + 1
            elif r == end:
                end += 1
            else:
                parts.append(sl[start:end])
                start, end = r, r + 1
            if k == len(rows) - 1:
                parts.append(sl[start:end])
        return torch.cat(parts)

    def tensor(self, key: str) -> torch.Tensor:
        return self.file.get_tensor(key)


class _Rows:
    """Global row index -> (shard, local row), gathering in the caller's order."""

    def __init__(self, shards: list[_Shard]):
        self.shards = shards
        self.offsets = np.cumsum([0] + [s.rows for s in shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, key: str, index) -> torch.Tensor:
        idx = _as_index(index, len(self))
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        out = [None] * len(idx)
        for s in np.unique(shard_of):
            where = np.nonzero(shard_of == s)[0]
            local = idx[where] - self.offsets[s]
            order = np.argsort(local, kind="stable")
            rows = self.shards[s].rows_of(key, local[order].tolist())
            for k, w in enumerate(where[order]):
                out[w] = rows[k]
        return torch.stack(out) if out else torch.zeros(0)


def _as_index(index, n: int) -> np.ndarray:
    if isinstance(index, slice):
        return np.arange(n)[index]
    idx = np.atleast_1d(np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64))
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(idx < 0, idx + n, idx)


class ImageRows:
    """Lazy (N, 3, H, W) view of the stored uint8 images; indexing gives floats in [-1, 1]."""

    def __init__(self, rows: _Rows, height: int, width: int):
        self._rows = rows
        self.shape = torch.Size((len(rows), 3, height, width))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        u8 = self._rows.gather("images", index)  # (B, H, W, 3)
        return u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@dataclass
class PromptEmbeddingData:
    """Images + precomputed prompt embeddings: the interface of `swd.train.common.CaptionedData`.

    The trainer reads `train_images` (len, shape, [idx]), `train_condition(idx)`,
    `empty_condition()`, `heldout_condition(n)` and `heldout_captions`.
    """

    train_images: ImageRows
    train_captions: list[str]
    heldout_captions: list[str]
    family: str
    _rows: _Rows
    _empty: TextCondition
    _heldout: Optional[TextCondition]

    @property
    def heldout_images(self) -> torch.Tensor:  # no reference images for the held-out prompts
        return torch.zeros(0, *self.train_images.shape[1:])

    @property
    def text_tokens(self) -> int:
        return self._empty.prompt_embeds.shape[1]

    @property
    def joint_dim(self) -> int:
        return self._empty.prompt_embeds.shape[2]

    @property
    def pooled_dim(self) -> int:
        return self._empty.pooled.shape[1]

    def empty_condition(self) -> TextCondition:
        return self._empty

    def train_condition(self, idx, drop_prob: float = 0.0) -> TextCondition:
        states = self._rows.gather("prompt_embeds", idx).float()
        pooled = self._rows.gather("pooled", idx).float()
        if drop_prob > 0:
            drop = torch.rand(len(states)) < drop_prob
            states[drop] = self._empty.prompt_embeds
            pooled[drop] = self._empty.pooled
        return TextCondition(states, pooled)

    def heldout_condition(self, n: int, offset: int = 0) -> TextCondition:
        if self._heldout is not None:
            sl = slice(offset, offset + n)
            return TextCondition(self._heldout.prompt_embeds[sl], self._heldout.pooled[sl])
        return self.train_condition(list(range(offset, min(offset + n, len(self.train_images)))))


def shard_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if files:
            return files
        raise SwdError(f"data.path: {path} holds no .safetensors files")
    raise SwdError(f"data.path: {path} does not exist (write it with `swd data encode-prompts`)")


def load_prompt_embeddings(path: str | Path) -> PromptEmbeddingData:
    """Open a file or folder written by `encode_prompt_dataset` (rows stay on disk)."""
    shards = [_Shard(p) for p in shard_files(path)]
    first = shards[0]
    image_shape, embed_shape, pooled_shape = first.shape("images"), first.shape("prompt_embeds"), first.shape("pooled")
    for s in shards:
        if s.shape("images")[1:] != image_shape[1:] or s.shape("prompt_embeds")[1:] != embed_shape[1:] \
                or s.shape("pooled")[1:] != pooled_shape[1:]:
            raise SwdError(f"data.path: {s.path} has other image or embedding sizes than {first.path}")
        if s.meta.get("family") != first.meta.get("family"):
            raise SwdError(f"data.path: {s.path} was encoded for {s.meta.get('family')}, "
                           f"{first.path} for {first.meta.get('family')}")
    if len(image_shape) != 4 or image_shape[-1] != 3:
        raise SwdError(f"data.path: images must be (N, H, W, 3) uint8, got {image_shape} in {first.path}")
    rows = _Rows(shards)
    captions = [c for s in shards for c in json.loads(s.meta.get("captions", "[]"))]
    if len(captions) != len(rows):
        captions = [""] * len(rows)
    empty = TextCondition(first.tensor("empty_prompt_embeds").float(), first.tensor("empty_pooled").float())
    heldout, heldout_captions = None, []
    for s in shards:
        if "heldout_prompt_embeds" in s.keys:
            heldout = TextCondition(s.tensor("heldout_prompt_embeds").float(), s.tensor("heldout_pooled").float())
            heldout_captions = json.loads(s.meta.get("heldout_captions", "[]"))
            break
    if heldout is None:  # sample grids then show the first training prompts
        heldout_captions = captions[:16]
    if len(rows) == 0:
        raise SwdError(f"data.path: {path} holds no images")
    return PromptEmbeddingData(ImageRows(rows, image_shape[1], image_shape[2]), captions, heldout_captions,
                               first.meta.get("family", ""), rows, empty, heldout)


# Writing.


class ImageSource:
    """Images from a folder (sorted file names) or a .npy / .npz array (N, H, W, 3) uint8.

    size: center-crop to a square and resize (Lanczos) to size x size; None keeps the stored size,
    which must then be the same for every image.
    """

    def __init__(self, path: str | Path, size: Optional[int] = None):
        self.path, self.size = Path(path), size
        self.array = None
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise SwdError(f"--images: {self.path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            self.names = [p.name for p in self.files]
        elif self.path.suffix in (".npy", ".npz") and self.path.is_file():
            array = np.load(self.path, mmap_mode="r") if self.path.suffix == ".npy" else np.load(self.path)["images"]
            if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
                raise SwdError(f"--images: {self.path} must hold uint8 (N, H, W, 3), got {array.dtype} {array.shape}")
            self.array = array
            self.names = [str(i) for i in range(len(array))]
        else:
            raise SwdError(f"--images: {self.path} is neither a folder of images nor a .npy/.npz file")

    def __len__(self) -> int:
        return len(self.names)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images start..stop-1 as uint8 (n, H, W, 3)."""
        from PIL import Image

        if self.array is not None:
            if not self.size:
                return np.array(self.array[start:stop])  # a writable copy (the .npy is memory-mapped)
            items = [Image.fromarray(np.asarray(a)) for a in self.array[start:stop]]
        else:
            items = []
            for p in self.files[start:stop]:
                with Image.open(p) as im:
                    items.append(im.convert("RGB"))
        out = [np.asarray(_square(im, self.size) if self.size else im) for im in items]
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise SwdError(f"--images: images have different sizes {sorted(shapes)[:3]}; pass --size N to resize them")
        return np.stack(out)


def _square(image, size: int):
    from PIL import Image

    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return image.crop(box).resize((size, size), Image.LANCZOS)


def read_captions(path: str | Path, names: list[str]) -> list[str]:
    """A .txt file (one caption per line, in image order) or .jsonl ({"file": name, "caption": text})."""
    path = Path(path)
    if not path.is_file():
        raise SwdError(f"--captions: {path} does not exist")
    if path.suffix == ".jsonl":
        table = {}
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                table[str(record["file"])] = str(record["caption"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SwdError(f"--captions: line {k + 1} of {path} is not "
                               f'{{"file": ..., "caption": ...}}') from None
        missing = [n for n in names if n not in table]
        if missing:
            raise SwdError(f"--captions: no caption for {len(missing)} image(s), e.g. {missing[0]!r}")
        return [table[n] for n in names]
    captions = path.read_text(encoding="utf-8").splitlines()
    if captions and captions[-1] == "" and len(captions) == len(names) + 1:
        captions = captions[:-1]
    if len(captions) != len(names):
        raise SwdError(f"--captions: {len(captions)} lines in {path} for {len(names)} images")
    return captions


class PipelineTextEncoder:
    """The text encoders of a local SD3 / FLUX diffusers pipeline folder (no transformer, no VAE).

    Calls diffusers' own `encode_prompt`: SD3 gives (77 CLIP + max_sequence_length T5) tokens and
    a 2048-wide pooled vector; FLUX gives max_sequence_length T5 tokens and the 768-wide CLIP
    pooled vector. `close()` frees the encoders.
    """

    def __init__(self, pipeline, device="cpu", max_sequence_length: Optional[int] = None):
        self.pipe, self.device = pipeline, torch.device(device)
        name = type(pipeline).__name__
        if "Flux" in name:
            self.family, default_len = "flux", 512
        elif "StableDiffusion3" in name:
            self.family, default_len = "sd3", 256
        else:
            raise SwdError(f"--pipeline: {name} is not an SD3 or FLUX pipeline")
        self.max_sequence_length = max_sequence_length or default_len

    @classmethod
    def from_folder(cls, folder: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
                    max_sequence_length: Optional[int] = None) -> "PipelineTextEncoder":
        from diffusers import FluxPipeline, StableDiffusion3Pipeline

        folder = Path(folder)
        index = folder / "model_index.json"
        if not index.is_file():
            raise SwdError(f"--pipeline: {folder} has no model_index.json (expected a local diffusers pipeline folder)")
        class_name = json.loads(index.read_text()).get("_class_name", "")
        if "Flux" in class_name:
            cls_ = FluxPipeline
        elif "StableDiffusion3" in class_name:
            cls_ = StableDiffusion3Pipeline
        else:
            raise SwdError(f"--pipeline: {folder} holds a {class_name or 'unknown'} pipeline; expected SD3 or FLUX")
        pipe = cls_.from_pretrained(folder, transformer=None, vae=None, dtype=dtype, local_files_only=True,
                                    use_safetensors=True)
        return cls(pipe.to(device), device, max_sequence_length)

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.family == "sd3":
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=captions, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        else:
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=captions, prompt_2=None, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length)
        return embeds.cpu(), pooled.cpu()

    def close(self) -> None:
        """Drop the text encoders: they are not needed again (training reads the file)."""
        self.pipe = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _encode_all(encoder: PromptEncoder, captions: list[str], batch_size: int, dtype: torch.dtype):
    embeds, pooled = [], []
    for start in range(0, len(captions), batch_size):
        e, p = encoder(captions[start:start + batch_size])
        embeds.append(e.to(dtype))
        pooled.append(p.to(dtype))
    return torch.cat(embeds), torch.cat(pooled)


def encode_prompt_dataset(out: str | Path, images: ImageSource, captions: list[str], encoder: PromptEncoder,
                          family: str, heldout_captions: Sequence[str] = (), batch_size: int = 16,
                          dtype: str = "bf16", shard_rows: int = 0, meta: Optional[dict] = None) -> list[Path]:
    """Encode every caption (and the empty prompt) once and write images + embeddings.

    out: a `.safetensors` file (one shard), or a folder of shards of `shard_rows` rows each.
    Returns the files written.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise SwdError(f"--dtype: choose one of {', '.join(DTYPES)}, got {dtype!r}")
    if len(captions) != len(images):
        raise SwdError(f"captions: {len(captions)} captions for {len(images)} images")
    if len(images) == 0:
        raise SwdError("--images: no images to encode")
    out = Path(out)
    n = len(images)
    single = out.suffix == ".safetensors"
    rows = n if single or shard_rows <= 0 else shard_rows
    if single and 0 < shard_rows < n:
        raise SwdError(f"--shard-rows: {n} images do not fit one file of {shard_rows} rows; pass a folder as --out")
    (out.parent if single else out).mkdir(parents=True, exist_ok=True)
    torch_dtype = DTYPES[dtype]
    empty_e, empty_p = _encode_all(encoder, [""], 1, torch_dtype)
    base = {"format": FORMAT, "family": family, **{k: str(v) for k, v in (meta or {}).items()}}
    written = []
    for k, start in enumerate(range(0, n, rows)):
        stop = min(start + rows, n)
        chunk = captions[start:stop]
        embeds, pooled = _encode_all(encoder, chunk, batch_size, torch_dtype)
        tensors = {"images": torch.from_numpy(images.read(start, stop)), "prompt_embeds": embeds, "pooled": pooled,
                   "empty_prompt_embeds": empty_e, "empty_pooled": empty_p}
        header = dict(base, captions=json.dumps(chunk, ensure_ascii=False))
        if k == 0 and heldout_captions:
            he, hp = _encode_all(encoder, list(heldout_captions), batch_size, torch_dtype)
            tensors.update(heldout_prompt_embeds=he, heldout_pooled=hp)
            header["heldout_captions"] = json.dumps(list(heldout_captions), ensure_ascii=False)
        path = out if single else out / SHARD_PATTERN.format(k)
        save_file({key: v.contiguous() for key, v in tensors.items()}, str(path), metadata=header)
        written.append(path)
    return written
