"""Checks of user input, in one place, run before any work or write.

Config checks (`check_teacher_config`, `check_distill_config`) cover what the dataclass types
cannot say: ranges, non-empty lists, grid index ranges, devices that exist, a usable run folder.
Argument helpers (`seed`, `count`, `finite`, output paths, model folders) serve the commands'
argparse parsers. Every failure is one `SwdError` line naming the field.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

from swd.errors import SwdError, is_out_of_memory

MAX_SEED = 2**32 - 1  # numpy's and distill's step_generator (seed * 1_000_003 + ...) limits
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# Scalar checks: `where` is the dotted field or the flag, e.g. "train.lr" or "--guidance".

def check_int(value: int, where: str, lo: int | None = None, hi: int | None = None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            raise SwdError(f"{where}: must be >= {lo}, got {value}")
        if lo is None:
            raise SwdError(f"{where}: must be <= {hi}, got {value}")
        raise SwdError(f"{where}: must be between {lo} and {hi}, got {value}")


def check_float(value: float, where: str, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False, allow_inf: bool = False) -> None:
    """A number in [lo, hi] (or open ends); NaN is always refused, infinity unless allow_inf."""
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise SwdError(f"{where}: must be a finite number, got {value}")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        right = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        if lo is not None and hi is not None:
            raise SwdError(f"{where}: must be in {left}, {right}, got {value}")
        if lo is not None:
            raise SwdError(f"{where}: must be {'>' if lo_open else '>='} {lo:g}, got {value}")
        raise SwdError(f"{where}: must be {'<' if hi_open else '<='} {hi:g}, got {value}")


def check_choice(value: str, where: str, choices) -> None:
    if value not in choices:
        raise SwdError(f"{where}: unknown {value!r}; choose one of {', '.join(choices)}")


def check_device(name: str, where: str = "device") -> None:
    """`auto`, `cpu`, `cuda`, `cuda:N` (N below the device count) or an available `mps`."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise SwdError(f"{where}: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SwdError(f"{where}: {name} requested but no CUDA device is available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SwdError(f"{where}: {name} does not exist; this machine has {count} CUDA device(s)")
        return
    if device.type == "mps" and torch.backends.mps.is_available():
        return
    raise SwdError(f"{where}: device {name!r} is not available here; use auto, cpu or cuda")


def check_seed(value: int, where: str = "seed") -> None:
    check_int(value, where, 0, MAX_SEED)


def _grid_max_index() -> int:
    from swd.schedules import flow_sigmas

    return len(flow_sigmas()) - 2  # the trainers' grid drops the final sigma 0


def check_index_range(value, where: str) -> None:
    hi_max = _grid_max_index()
    lo, hi = value
    if not 0 <= lo <= hi <= hi_max:
        raise SwdError(f"{where}: need 0 <= lo <= hi <= {hi_max} (indices into the {hi_max + 1}-step sigma grid), "
                       f"got [{lo}, {hi}]")


def check_betas(betas, where: str) -> None:
    for i, b in enumerate(betas):
        check_float(b, f"{where}[{i}]", 0.0, 1.0, hi_open=True)


# Paths.

def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: str | Path, where: str, target: str | Path | None = None) -> None:
    """`folder` exists as a folder we can write in, or can be created (no file on its way);
    `target` (default: the folder) is what the message names as not writable."""
    folder = Path(folder)
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise SwdError(f"{where}: {base} is a file, not a folder, so {target or folder} cannot be written")
    try:  # os.access says yes to root on read-only mounts and /sys: try for real
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as err:
        raise SwdError(f"{where}: cannot write in {base} ({err.strerror or err})") from None


def check_output_file(path: str | Path, where: str, suffixes=IMAGE_SUFFIXES) -> None:
    path = Path(path)
    if path.is_dir():
        raise SwdError(f"{where}: {path} is a folder; give a file name ending in {suffixes[0]}")
    if path.suffix.lower() not in suffixes:
        raise SwdError(f"{where}: {path} must end in {', '.join(suffixes)}")
    check_writable_folder(path.parent, where, path)


def check_output_folder(path: str | Path, where: str) -> None:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SwdError(f"{where}: {path} is an existing file, not a folder")
    check_writable_folder(path, where)


def check_input_file(path: str | Path, where: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise SwdError(f"{where}: {path} is a folder, not a file")
    if not path.is_file():
        raise SwdError(f"{where}: {path} does not exist")
    return path


def read_json(path: str | Path, where: str):
    """A JSON file's content; unreadable or malformed files are one line naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SwdError(f"{where}: {path} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise SwdError(f"{where}: {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except OSError as err:
        raise SwdError(f"{where}: cannot read {path} ({err.strerror or err})") from None


# diffusers classes of the pixel-space testbed models (swd.models.testbed): a model folder's
# config.json `_class_name` says which one to load.
TESTBED_CLASSES = ("SD3Transformer2DModel", "UNet2DConditionModel")


def check_model_folder(path: str | Path, where: str = "--model", class_name: str | tuple[str, ...] = TESTBED_CLASSES,
                       in_channels: int | None = 3, what: str = "saved diffusers model folder") -> Path:
    """A diffusers model folder of an expected class (and pixel channels), with safetensors weights.

    Checked before diffusers sees it: its own errors name no flag, and for a folder holding only
    a pickled .bin it would fall back to torch.load. A Hub id (`owner/name`, not a local path) is
    fetched through huggingface_hub's cache first (swd.hub; HF_HUB_OFFLINE honoured).
    """
    from swd.hub import model_folder

    folder = model_folder(path, where)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise SwdError(f"{where}: {folder} is not a {what} (no config.json)")
    config = read_json(config_file, where)
    if not isinstance(config, dict):
        raise SwdError(f"{where}: {config_file} does not hold a JSON object")
    kind = config.get("_class_name")
    classes = (class_name,) if isinstance(class_name, str) else tuple(class_name)
    if kind not in classes:
        expected = f"the {classes[0]}" if len(classes) == 1 else f"a {' or '.join(classes)}"
        raise SwdError(f"{where}: {folder} holds a {kind or 'model of unknown class'}, not {expected} expected")
    if in_channels is not None and config.get("in_channels") != in_channels:
        raise SwdError(f"{where}: {folder} is a model with in_channels={config.get('in_channels')}; expected the "
                       f"pixel-space testbed ({in_channels} channels; latent SD3/FLUX models need their pipeline)")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        what = f"only pickled weights ({', '.join(pickles)})" if pickles else "no weights"
        raise SwdError(f"{where}: {folder} holds {what}; swd loads .safetensors weights only")
    return folder


def load_model_folder(path: str | Path, where: str = "--model", what: str = "saved diffusers model folder", **kwargs):
    """(model, folder) of a testbed model folder, loaded as the class its config.json names."""
    import diffusers

    folder = check_model_folder(path, where, what=what)
    kind = read_json(folder / "config.json", where)["_class_name"]
    return load_pretrained(getattr(diffusers, kind), folder, where, **kwargs), folder


def load_pretrained(cls, folder: Path, where: str, **kwargs):
    """`cls.from_pretrained(folder)` with safetensors only; a broken folder is one SwdError line."""
    from safetensors import SafetensorError

    try:
        return cls.from_pretrained(folder, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        if is_out_of_memory(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SwdError(f"{where}: cannot load a {cls.__name__} from {folder} ({first[:200]})") from None


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_memory(nbytes: int, where: str, what: str) -> None:
    """Refuse a request whose tensors alone exceed this machine's memory (before allocating them:
    an over-committed allocation can summon the OOM killer instead of raising)."""
    total = physical_memory()
    if total is not None and nbytes > total:
        raise SwdError(f"{where}: {what} need about {nbytes / 2**30:.0f} GiB, more than this machine's "
                       f"{total / 2**30:.0f} GiB; ask for fewer")


# argparse types: a bad value is argparse's own one-line error, before the command runs.

def arg_seed(text: str) -> int:
    value = _arg_int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be between 0 and {MAX_SEED}, got {text}")
    return value


def arg_int_at_least(lo: int):
    def parse(text: str) -> int:
        value = _arg_int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {text}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def arg_finite(lo: float | None = None, lo_open: bool = False):
    """A finite float (argparse's float accepts nan and inf), at least (or above) `lo`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _arg_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# Configs.

def _check_run_dir(run_dir: str, resume: bool | None) -> None:
    if not run_dir:
        raise SwdError("run_dir: must name a folder")
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise SwdError(f"run_dir: {run} is an existing file, not a folder")
    check_writable_folder(run, "run_dir")
    if resume is None:
        return
    from swd.train.checkpoint import list_checkpoints

    found = list_checkpoints(run / "checkpoints")
    if not resume and found:
        raise SwdError(f"run_dir: {run} already has checkpoints; pass --resume or choose another run_dir")
    if resume and not found:
        raise SwdError(f"--resume: no checkpoint in {run / 'checkpoints'}")


def _check_common_train(tc, where: str = "train") -> None:
    check_int(tc.steps, f"{where}.steps", 1)
    check_int(tc.batch_size, f"{where}.batch_size", 1)
    check_float(tc.grad_clip, f"{where}.grad_clip", 0.0, lo_open=True, allow_inf=True)
    check_choice(tc.precision, f"{where}.precision", ("bf16", "fp32"))
    check_device(tc.device, f"{where}.device")
    check_seed(tc.seed, f"{where}.seed")
    for name in ("log_every", "sample_every", "checkpoint_every"):
        check_int(getattr(tc, name), f"{where}.{name}", 1)
    check_int(tc.keep_checkpoints, f"{where}.keep_checkpoints", 0)  # 0 keeps them all
    check_float(tc.max_minutes, f"{where}.max_minutes", 0.0)


def _check_model_config(mc) -> int:
    """A testbed model config's own checks; returns the multiple every image side must be of."""
    for name, value in vars(mc).items():
        if isinstance(value, int) and not isinstance(value, bool):
            check_int(value, f"model.{name}", 1)  # every integer of both testbed archs is a size or count
    if hasattr(mc, "transformer_kwargs"):  # MMDiT: width / head_dim and sample_size / patch_size
        mc.transformer_kwargs()
        return mc.patch_size
    if hasattr(mc, "unet_kwargs"):  # UNet: channels against groups and heads; sides halve per level
        mc.unet_kwargs()
        return mc.size_multiple
    return 1


def check_teacher_config(cfg, resume: bool | None = None) -> None:
    """Every field of a TeacherConfig in range; `resume` (when given) checked against the run folder."""
    tc, mc = cfg.train, cfg.model
    multiple = _check_model_config(mc)
    _check_common_train(tc)
    check_float(tc.lr, "train.lr", 0.0)
    check_float(tc.weight_decay, "train.weight_decay", 0.0)
    check_betas(tc.betas, "train.betas")
    check_int(tc.warmup_steps, "train.warmup_steps", 0)
    check_float(tc.ema_decay, "train.ema_decay", 0.0, 1.0)
    check_float(tc.caption_dropout, "train.caption_dropout", 0.0, 1.0)
    check_float(tc.logit_normal_mean, "train.logit_normal_mean")
    check_float(tc.logit_normal_std, "train.logit_normal_std", 0.0, lo_open=True)
    if not tc.scales:
        raise SwdError("train.scales: give at least one pixel side to train on")
    bad = [s for s in tc.scales if s < 1 or s % multiple or s > mc.sample_size]
    if bad:
        raise SwdError(f"train.scales: each must be a positive multiple of the model's patch size {multiple} and "
                       f"at most model.sample_size {mc.sample_size}, got {bad[0]}")
    check_int(cfg.sample.steps, "sample.steps", 1)
    check_float(cfg.sample.guidance, "sample.guidance", 0.0)
    check_int(cfg.sample.num_prompts, "sample.num_prompts", 1)
    check_choice(cfg.data.name, "data.name", ("emoji", "shapes"))
    check_int(cfg.data.text_tokens, "data.text_tokens", 2)  # the CLS token and at least one more
    _check_run_dir(cfg.run_dir, resume)


def check_distill_config(cfg, resume: bool | None = None) -> None:
    """Every field of a DistillConfig in range, the schedule resolvable, the run folder usable."""
    from swd.losses import FAKE_WEIGHTINGS
    from swd.train.common import TRAINING_SETS, check_patterns
    from swd.objectives import OBJECTIVES
    from swd.train.distill import ARCH_NAMES, training_schedule

    check_choice(cfg.objective, "objective", tuple(OBJECTIVES))
    check_choice(cfg.model.arch, "model.arch", ARCH_NAMES)
    check_float(cfg.model.flux_guidance, "model.flux_guidance", 0.0)
    tc, lc = cfg.train, cfg.losses
    _check_common_train(tc)
    has_fake = OBJECTIVES[cfg.objective].needs_fake(lc)
    check_int(tc.fake_updates, "train.fake_updates", 1 if has_fake else 0)
    check_choice(tc.scale_order, "train.scale_order", ("round_robin", "random"))
    check_float(tc.ema_decay, "train.ema_decay", 0.0, 1.0, hi_open=True)
    check_int(tc.eval_every, "train.eval_every", 0)
    check_int(tc.eval_n, "train.eval_n", 4)  # precision and recall use 3 neighbours
    for part in ("generator", "fake"):
        mc = getattr(cfg, part)
        check_float(mc.lr, f"{part}.lr", 0.0)
        check_float(mc.weight_decay, f"{part}.weight_decay", 0.0)
        check_betas(mc.betas, f"{part}.betas")
        check_int(mc.lora_rank, f"{part}.lora_rank", 0)
        check_int(mc.lora_alpha, f"{part}.lora_alpha", 0)
        check_patterns(mc.frozen, f"{part}.frozen")
        if mc.frozen and mc.lora_rank > 0:
            raise SwdError(f"{part}.frozen: applies to a full fine-tune (lora_rank 0); a LoRA already keeps "
                           f"the base weights frozen")
    for name in ("dmd_weight", "mmd_weight", "gan_weight", "disc_weight"):
        check_float(getattr(lc, name), f"losses.{name}", 0.0)
    if lc.teacher_cfg is not None:
        check_float(lc.teacher_cfg, "losses.teacher_cfg", 0.0)
    for name in ("dmd_sigma_idx", "mmd_sigma_idx", "fake_sigma_idx"):
        check_index_range(getattr(lc, name), f"losses.{name}")
    check_choice(lc.mmd_kernel, "losses.mmd_kernel", ("linear", "rbf"))
    check_float(lc.mmd_bandwidth, "losses.mmd_bandwidth", 0.0, lo_open=True)
    check_choice(lc.fake_weighting, "losses.fake_weighting", FAKE_WEIGHTINGS)
    check_choice(lc.mmd_form, "losses.mmd_form", ("pseudo_huber", "mse"))
    if lc.feature_block is not None:
        check_int(lc.feature_block, "losses.feature_block", 0)
    check_choice(lc.feature_source, "losses.feature_source", ("auto", "teacher", "fake"))
    if lc.feature_source == "fake" and not has_fake:
        raise SwdError(f"losses.feature_source: 'fake' needs a fake-score model (objective {cfg.objective} has none)")
    check_choice(cfg.data.name, "data.name", TRAINING_SETS)
    check_int(cfg.data.text_tokens, "data.text_tokens", 2)
    schedule = training_schedule(cfg)  # a bad preset name or schedule file fails here
    if not schedule.scales:
        raise SwdError("schedule: has no scales")
    _check_run_dir(cfg.run_dir, resume)
