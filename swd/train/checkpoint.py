"""Atomic, resumable checkpoints.

A checkpoint is a folder `step_00001234/` inside the run's `checkpoints/`: module weights as
safetensors, optimizer and RNG states as tensors-only torch files (loaded with
weights_only=True), and `meta.json`. It is written under a temporary name and renamed into
place, so a crash mid-write never leaves a half checkpoint that looks complete; the last
`keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from swd.errors import SwdError

PREFIX = "step_"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(root: str | Path, step: int, modules: dict, optimizers: dict, extra: dict, keep: int = 3) -> Path:
    """Write modules' state dicts, optimizers, RNG and `extra` (JSON) for `step`, atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, module in modules.items():
        save_file(_contiguous(module.state_dict()), str(tmp / f"{name}.safetensors"))
    torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, tmp / "optimizers.pt")
    torch.save(_rng_to_tensors(rng_state()), tmp / "rng.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    for f in tmp.iterdir():  # make the data durable before the rename publishes it
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").exists())


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, modules: dict, optimizers: dict) -> dict:
    """Restore modules, optimizers and RNG from `path`; returns meta.json's content."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise SwdError(f"checkpoint: {path} is not a checkpoint folder (no meta.json)")
    for name, module in modules.items():
        module.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    saved = torch.load(path / "optimizers.pt", weights_only=True)
    for name, opt in optimizers.items():
        opt.load_state_dict(saved[name])
    set_rng_state(_rng_from_tensors(torch.load(path / "rng.pt", weights_only=True)))
    return json.loads((path / "meta.json").read_text())


# numpy's and python's RNG states are tuples of arrays/ints: store them as tensors so the
# file loads with weights_only=True.
def _rng_to_tensors(state: dict) -> dict:
    name, keys, pos, has_gauss, cached = state["numpy"]
    version, internal, gauss = state["python"]
    out = {
        "torch": state["torch"],
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_cached": torch.tensor([cached], dtype=torch.float64),
        "python_internal": torch.tensor(internal, dtype=torch.int64),
        "python_meta": torch.tensor([version, 0 if gauss is None else 1], dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64),
    }
    if "cuda" in state:
        out["cuda"] = torch.stack(state["cuda"])
    return out


def _rng_from_tensors(t: dict) -> dict:
    pos, has_gauss = t["numpy_meta"].tolist()
    version, gauss_set = t["python_meta"].tolist()
    state = {
        "torch": t["torch"],
        "numpy": ("MT19937", t["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(t["numpy_cached"][0])),
        "python": (int(version), tuple(int(v) for v in t["python_internal"].tolist()),
                   float(t["python_gauss"][0]) if gauss_set else None),
    }
    if "cuda" in t:
        state["cuda"] = list(t["cuda"].unbind(0))
    return state
