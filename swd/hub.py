"""Resolve a model or LoRA source that may be a local path or a Hugging Face Hub id.

A local path that exists always wins. Otherwise `owner/name` is a Hub repo (downloaded whole
through huggingface_hub's cache) and `owner/name/file.safetensors` (or `filename=`) one file in
it. HF_HUB_OFFLINE, HF_HUB_CACHE and HF_HOME are read at call time, so setting them after import
works; offline, only the cache is read and a missing entry is one SwdError line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from swd.errors import SwdError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")
_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _cache_dir() -> Optional[str]:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def split_hub_id(source: str) -> Optional[tuple[str, Optional[str]]]:
    """`owner/name` -> (repo, None); `owner/name/sub/file.ext` -> (repo, 'sub/file.ext'); else None."""
    if source.startswith(("/", ".", "~")) or "\\" in source or "//" in source:
        return None
    parts = source.split("/")
    if len(parts) < 2 or not _REPO_ID.match("/".join(parts[:2])):
        return None
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def resolve(source, filename: Optional[str] = None, what: str = "model", revision: Optional[str] = None) -> Path:
    """A local Path for `source` (a path or a Hub id); `filename` picks one file inside it."""
    path = Path(os.path.expanduser(str(source)))
    if path.exists():
        if filename is None:
            return path
        inner = path / filename
        if not inner.exists():
            raise SwdError(f"{what}: {inner} does not exist")
        return inner
    hub = split_hub_id(str(source))
    if hub is None:
        raise SwdError(f"{what}: {source} does not exist (not a local path, nor a Hub id owner/name)")
    repo, inner_file = hub
    if filename is not None:
        inner_file = f"{inner_file}/{filename}" if inner_file else filename
    return _download(repo, inner_file, what, revision)


# A diffusers model folder's own files (a Hub repo may also hold single-file checkpoints and pickles).
MODEL_FILES = ("config.json", "diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.json", "*.yaml")
# A pipeline repo: model_index.json and one level of component folders; no pickles, no variants.
PIPELINE_FILES = ("model_index.json", "*/*")
PIPELINE_SKIP = ("*.bin", "*.pt", "*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.fp16.*")


def model_folder(source, what: str = "model", sub: Optional[str] = None) -> Path:
    """A diffusers model folder by local path or Hub id (`owner/name` or `owner/name/subfolder`).

    A path that exists, or a string that is no Hub id, comes back as a Path for the caller's own
    checks. From the Hub only the model's files are fetched (config.json, safetensors, yaml), also
    those of `sub/` when the repo is a pipeline (e.g. sub="transformer").
    """
    path = Path(os.path.expanduser(str(source)))
    hub = None if path.exists() else split_hub_id(str(source))
    if hub is None:
        return path
    repo, inner = hub
    prefix = f"{inner}/" if inner else ""
    patterns = [prefix + p for p in MODEL_FILES] + ([f"{prefix}{sub}/{p}" for p in MODEL_FILES] if sub else [])
    root = _download(repo, None, what, None, allow_patterns=patterns)
    return root / inner if inner else root


def pipeline_folder(source, what: str = "pipeline", variant: Optional[str] = None) -> Path:
    """A diffusers pipeline folder by local path or Hub id; from the Hub its component folders only."""
    path = Path(os.path.expanduser(str(source)))
    hub = None if path.exists() else split_hub_id(str(source))
    if hub is None or hub[1] is not None:
        return path
    skip = [p for p in PIPELINE_SKIP if not (variant and p == "*.fp16.*")]
    return _download(hub[0], None, what, None, allow_patterns=list(PIPELINE_FILES), ignore_patterns=skip)


def _download(repo: str, filename: Optional[str], what: str, revision: Optional[str], **patterns) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise SwdError(f"{what}: {repo} is a Hub id but huggingface_hub is not installed") from None
    offline = is_offline()
    kwargs = dict(repo_id=repo, revision=revision, cache_dir=_cache_dir(), local_files_only=offline)
    label = f"{repo}/{filename}" if filename else repo
    try:
        if filename:
            return Path(huggingface_hub.hf_hub_download(filename=filename, **kwargs))
        return Path(huggingface_hub.snapshot_download(**kwargs, **patterns))
    except LocalEntryNotFoundError:
        if offline:
            raise SwdError(f"{what}: {label} is no local path and not in the Hub cache, and HF_HUB_OFFLINE is set; "
                           "download it once online or pass a local path") from None
        raise SwdError(f"{what}: {label} is no local path, and as a Hub id it cannot be downloaded (no connection?) "
                       "nor found in the Hub cache") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SwdError(f"{what}: {label} is no local path, and the Hub gives {type(err).__name__}: {first}") from None
