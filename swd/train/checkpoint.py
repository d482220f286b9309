"""Atomic, verified, resumable checkpoints.

A checkpoint is a folder `step_00001234/` inside the run's `checkpoints/`: module weights as
safetensors, optimizer and RNG states as tensors-only torch files (loaded with
weights_only=True), and `meta.json`, which records each file's size and sha256. It is written
under a temporary name and renamed into place, so a crash mid-write never leaves a half
checkpoint that looks complete; the last `keep` checkpoints are kept.

Two guards keep a resume from starting on bad state: nothing is written when a weight or an
optimizer state is not finite (a diverged step must not replace the last good checkpoint), and
`latest_checkpoint` skips a checkpoint whose files no longer match meta.json (a torn or edited
file), falling back to the newest intact one and saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle  # only for its error type: nothing here unpickles
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from swd.errors import SwdError

PREFIX = "step_"
TMP_PREFIX = ".tmp-"
# Optimizer settings taken from the current config on resume (the saved state keeps the moments).
HYPER_PARAMETERS = ("lr", "betas", "weight_decay", "eps")


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


def _tensors(obj, prefix: str):
    """(name, tensor) of every tensor nested in dicts / lists (an optimizer's state_dict)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def first_non_finite(named_tensors) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first floating tensor holding NaN or inf, else None."""
    for name, t in named_tensors:
        if t.is_floating_point() or t.is_complex():
            bad = t.numel() - int(torch.isfinite(t).sum())
            if bad:
                return name, bad, t.numel()
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(root: str | Path, step: int, modules: dict, optimizers: dict, extra: dict, keep: int = 3) -> Path:
    """Write modules' state dicts, optimizers, RNG and `extra` (JSON) for `step`, atomically.

    Raises SwdError, writing nothing, when a weight or optimizer state is NaN or infinite.
    """
    root = Path(root)
    opt_states = {name: opt.state_dict() for name, opt in optimizers.items()}
    # Checked where the tensors live (no CPU copy of every module at once).
    bad = first_non_finite(item for name, module in modules.items() for item in _tensors(module.state_dict(), name))
    bad = bad or first_non_finite(_tensors(opt_states, "optimizer"))
    if bad is not None:
        where, n, total = bad
        last = _newest_name(root)
        kept = f"the last good checkpoint is kept in {root / last}" if last else "no checkpoint was written before it"
        raise SwdError(f"training diverged: {n} of {total} values of {where} are not finite at step {step}; "
                       f"this checkpoint is not written and {kept}")
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(root)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, module in modules.items():
        save_file(_contiguous(module.state_dict()), str(tmp / f"{name}.safetensors"))
    torch.save(opt_states, tmp / "optimizers.pt")
    torch.save(_rng_to_tensors(rng_state()), tmp / "rng.pt")
    files = {}
    for f in sorted(tmp.iterdir()):  # make the data durable before the rename publishes it
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    meta = tmp / "meta.json"
    meta.write_text(json.dumps({"step": step, **extra, "files": files}, indent=2))
    with open(meta, "rb") as fh:
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _newest_name(root: Path) -> str | None:
    found = list_checkpoints(root)
    return found[-1].name if found else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale_tmp(root: str | Path) -> list[Path]:
    """Remove `.tmp-step_N-PID` folders of killed writes; returns what was removed.

    A folder is stale when its writer's pid is gone, or when a complete checkpoint of a later
    step exists (one run has one writer, and it writes steps in order, so a live writer is never
    behind the newest checkpoint; this also covers a pid reused by another process).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    newest = list_checkpoints(root)
    newest_step = int(newest[-1].name[len(PREFIX):]) if newest else -1
    removed = []
    for p in root.iterdir():
        if not (p.is_dir() and p.name.startswith(TMP_PREFIX + PREFIX)):
            continue
        step_text, _, pid_text = p.name[len(TMP_PREFIX + PREFIX):].partition("-")
        try:
            step, pid = int(step_text), int(pid_text)
        except ValueError:
            continue  # not a name we write
        if pid == os.getpid() or (_pid_alive(pid) and step > newest_step):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete-looking checkpoints (a step_ folder with meta.json), oldest first; not verified."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").exists())


def verify_checkpoint(path: str | Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, or None when its files match meta.json.

    Checkpoints written before meta.json held file records are only checked for readable meta.
    """
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"meta.json is unreadable ({type(err).__name__})"
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        return "meta.json has no step"
    for name, record in (meta.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != record.get("bytes"):
            return f"{name} is {size} bytes, meta.json says {record.get('bytes')}"
        if _sha256(f) != record.get("sha256"):
            return f"{name} does not match its sha256 in meta.json"
    return None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest intact checkpoint; torn ones are skipped with a note on stderr.

    None when there is no checkpoint at all; SwdError when there are some but none is intact
    (resuming from nothing would silently restart the run).
    """
    clean_stale_tmp(root)
    found = list_checkpoints(root)
    skipped = []
    for path in reversed(found):
        reason = verify_checkpoint(path)
        if reason is None:
            if skipped:
                print(f"swd: resuming from {path.name}, the newest intact checkpoint", file=sys.stderr)
            return path
        skipped.append(path.name)
        print(f"swd: skipping checkpoint {path.name}: {reason}", file=sys.stderr)
    if skipped:
        raise SwdError(f"checkpoint: no intact checkpoint in {root} (skipped {', '.join(skipped)})")
    return None


def trim_log(path: str | Path, step: int) -> int:
    """Keep only the records of steps <= `step` in a JSON-lines training log; returns how many
    lines were dropped.

    A run killed after logging step N + k but checkpointing at N repeats steps N+1..N+k on resume;
    without this its log.jsonl holds those steps twice. A torn last line is dropped too.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += bool(line.strip())
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def fit_error(err: Exception) -> str:
    """The first useful line of a load_state_dict error (the first line only names the class)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("size mismatch", "Missing key", "Unexpected key")):
            return line[:240]
    return (lines[-1] if lines else type(err).__name__)[:240]


def load_module(path: str | Path, name: str, module: torch.nn.Module) -> None:
    """Load `name`.safetensors of the checkpoint at `path` into `module`; every fault is one line.

    Resume (`load_checkpoint`) and `swd export` both load through here, so a torn file or a
    checkpoint of another model reads the same to the user either way.
    """
    path = Path(path)
    file = path / f"{name}.safetensors"
    if not file.is_file():
        raise SwdError(f"checkpoint: {path.name} has no {file.name} (was it written by another objective?)")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise SwdError(f"checkpoint: {file} is unreadable ({err})") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise SwdError(f"checkpoint: {path.name}/{file.name} does not fit the model ({fit_error(err)}); "
                       f"was it written with another model config or teacher?") from None


def load_checkpoint(path: str | Path, modules: dict, optimizers: dict) -> dict:
    """Restore modules, optimizers and RNG from `path`; returns meta.json's content.

    The optimizers keep their moments from the checkpoint but their hyper-parameters (lr, betas,
    weight_decay, eps) from how they were built, i.e. the current config: a changed learning rate
    on resume takes effect, and the run's config.yaml tells the truth.
    """
    path = Path(path)
    if not (path / "meta.json").exists():
        raise SwdError(f"checkpoint: {path} is not a checkpoint folder (no meta.json)")
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SwdError(f"checkpoint: {path / 'meta.json'} is not valid JSON") from None
    for name, module in modules.items():
        load_module(path, name, module)
    saved = _load_tensors_file(path / "optimizers.pt")
    for name, opt in optimizers.items():
        if name not in saved:
            raise SwdError(f"checkpoint: {path.name}/optimizers.pt has no {name!r} optimizer")
        fresh = [{k: g[k] for k in HYPER_PARAMETERS if k in g} for g in opt.param_groups]
        try:
            opt.load_state_dict(saved[name])
        except (ValueError, KeyError, RuntimeError) as err:
            raise SwdError(f"checkpoint: the {name!r} optimizer state of {path.name} does not fit "
                           f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        for group, settings in zip(opt.param_groups, fresh):
            group.update(settings)
    set_rng_state(_rng_from_tensors(_load_tensors_file(path / "rng.pt")))
    return meta


def _load_tensors_file(file: Path):
    try:
        return torch.load(file, weights_only=True)
    except FileNotFoundError:
        raise SwdError(f"checkpoint: {file} is missing") from None
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:  # torn zip, refused pickle
        raise SwdError(f"checkpoint: {file} is unreadable ({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})") from None


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
