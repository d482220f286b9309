"""Sample a testbed model on held-out prompts and score the samples: `evaluate_model`.

One path for the CLI (`swd eval run`), the trainers and the reports: load the model (a folder
saved with `save_pretrained`, or a module), pick its sampler (a scale-wise student schedule, or
the teacher's multistep Euler with classifier-free guidance), sample N images for the prompt
set in batches, then compute against the held-out real images:

- `fd`: Fréchet distance in the evaluator's 256-dim feature space (not FID: see evaluator.py);
- `precision` / `recall`: k-NN manifolds (k = 3) in the same space;
- `text_alignment`: mean cosine of image and caption in the evaluator's joint space, with the
  real held-out images' value (`text_alignment_real`) beside it for scale;
- `lap_swd`: Laplacian-pyramid sliced Wasserstein distance (x 1e3), network-free;
- `shapes`: accuracy from the exact scorer (shapes prompts only).

`flops_per_image` (transformer FLOPs of one image's sampling run) is counted on the meta device
(`swd.eval.flops.model_sampling_flops`); `TrainingEvaluation` is the trainers' cheaper repeat.

The prompt sets: `emoji-heldout` cycles through the held-out emoji captions (concepts the models
never trained on) in a fixed shuffled order, so that a small N still mixes styles and concepts;
`shapes` takes held-out shapes samples one category at a time in turn (`balanced_order`; the
held-out split, made by caption, is uneven and has no two-object captions), cycled if N is larger.
Sampling draws all noise from one CPU generator seeded with `seed`, batch after batch, so a
seed and a batch size give the same noise on every device (and the same images on the CPU).
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from swd.data import PROMPT_DATA  # prompt set -> the data it holds out
from swd.errors import SwdError

PROMPT_SETS = tuple(PROMPT_DATA)
TEACHER = "teacher"
MODEL_SCHEDULE = "model"  # the schedule.yaml saved inside the model folder
DEFAULT_TEXT_TOKENS = 16  # the testbed recipes' data.text_tokens
GRID_IMAGES = 64


@dataclass
class PromptSet:
    """What to sample and what to compare with."""

    name: str
    data: str  # "emoji" or "shapes": which evaluator and reference
    captions: list[str]  # one per generated image
    samples: list | None  # shapes: the ShapeSample of each caption, for the exact scorer
    real_images: torch.Tensor  # (M, 3, 64, 64) in [-1, 1]: the held-out reference set
    real_captions: list[str]


@functools.lru_cache(maxsize=4)
def _heldout(name: str, data_path: str | None):
    """The held-out ImageSet (and shapes samples) of a prompt set; kept per process, since
    decoding the whole emoji set takes seconds and a trainer evaluates many times."""
    if name == "emoji-heldout":
        from swd.data.emoji import load_emoji

        return load_emoji(data_path, split="heldout"), None
    from swd.data.shapes import load_shapes

    return load_shapes(data_path, split="heldout", progress=False)


def balanced_order(categories: list[str]) -> list[int]:
    """Indices that take one item of each category in turn (categories in first-seen order, items
    in their order), skipping categories that ran out: any prefix is as balanced as it can be."""
    groups: dict[str, list[int]] = {}
    for index, category in enumerate(categories):
        groups.setdefault(category, []).append(index)
    order = []
    for rank in range(max((len(g) for g in groups.values()), default=0)):
        order += [g[rank] for g in groups.values() if rank < len(g)]
    return order


def load_prompts(name: str, n: int, data_path: str | Path | None = None) -> PromptSet:
    """N prompts of a prompt set, cycled, plus the held-out real images they are compared with."""
    if name not in PROMPT_SETS:
        raise SwdError(f"prompts: unknown {name!r}; choose from {', '.join(PROMPT_SETS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SwdError(f"n: must be a positive number of images, got {n!r}")
    held, all_samples = _heldout(name, None if data_path is None else str(data_path))
    if len(held) == 0:
        raise SwdError(f"prompts: the {name} set has no held-out images")
    if all_samples is not None:  # shapes: one of each category in turn (the split is uneven)
        order = balanced_order([sample.category for sample in all_samples])
    else:  # emoji: the file is sorted by style, then concept
        order = np.random.default_rng(0).permutation(len(held)).tolist()
    rows = [order[i % len(held)] for i in range(n)]
    samples = [all_samples[i] for i in rows] if all_samples is not None else None
    captions = [held.captions[i] for i in rows]
    return PromptSet(name, PROMPT_DATA[name], captions, samples,
                     held.tensors(), held.captions)


def load_model(model: str | Path | torch.nn.Module, where: str = "model",
               what: str = "saved model folder") -> tuple[torch.nn.Module, Path | None]:
    """A testbed model (SD3 transformer or UNet, by its config.json) from a `save_pretrained`
    folder (or the module itself), and the folder; errors name `where` (a flag or field)."""
    if isinstance(model, torch.nn.Module):
        return model, None
    from swd.train.validation import load_model_folder

    # The class, the pixel channels and safetensors-only weights are checked before diffusers loads.
    return load_model_folder(model, where, what=what)


def saved_schedule(folder: Path | None):
    """The ScaleSchedule a student folder carries (its schedule.yaml), or None."""
    from swd.schedules import ScaleSchedule

    file = folder / "schedule.yaml" if folder is not None else None
    return ScaleSchedule.load(file) if file is not None and file.is_file() else None


def resolve_eval_schedule(spec: str | None, folder: Path | None):
    """None for the teacher sampler, else a ScaleSchedule: "model" (the folder's schedule.yaml),
    a preset name, or a schedule file."""
    from swd.schedules import resolve_schedule

    if spec == TEACHER:
        return None
    if spec in (None, MODEL_SCHEDULE):
        schedule = saved_schedule(folder)
        if schedule is None:
            where = f"{folder} has no schedule.yaml" if folder is not None else "the model is not a folder"
            raise SwdError(f"schedule: {where}; give a preset name, a schedule file or 'teacher'")
        return schedule
    return resolve_schedule(spec)


def text_tokens_of(folder: Path | None) -> int:
    """data.text_tokens of the run that wrote the folder (its parent's config.yaml, or the run
    config shipped inside it: distill-config.yaml / teacher-config.yaml), else 16."""
    if folder is not None:
        for config in (folder / "config.yaml", folder / "distill-config.yaml", folder / "teacher-config.yaml",
                       folder.parent / "config.yaml"):
            if config.is_file():
                import yaml

                try:
                    tokens = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("text_tokens")
                except (yaml.YAMLError, AttributeError):
                    tokens = None
                if isinstance(tokens, int) and tokens > 1:
                    return tokens
    return DEFAULT_TEXT_TOKENS


def encode_pooled_rows(captions: list[str], max_length: int, pool: list[str] | None = None, full: bool = False):
    """MiniLM embeddings of `captions`, computed for all of `pool` (one cache file per pool) and
    picked row by row; `full` returns the CaptionEmbeddings, else the pooled (N, 384) only."""
    from swd.data.text import encode_captions

    pool = sorted(set(pool)) if pool is not None else sorted(set(captions))
    row = {c: i for i, c in enumerate(pool)}
    missing = next((c for c in captions if c not in row), None)
    if missing is not None:
        raise SwdError(f"captions: {missing!r} is not in the caption pool")
    table = encode_captions(pool, max_length=max_length)[[row[c] for c in captions]]
    return table if full else table.pooled


@torch.no_grad()
def sample_images(
    transformer: torch.nn.Module,
    captions: list[str],
    schedule,
    seed: int = 0,
    batch_size: int = 32,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    teacher_steps: int = 28,
    guidance: float = 4.5,
    device: str | torch.device = "cpu",
    precision: str = "bf16",
    progress: bool = True,
    caption_pool: list[str] | None = None,
) -> tuple[torch.Tensor, float]:
    """Images (N, 3, S, S) in [-1, 1] on the CPU for the captions, and the sampling seconds.

    `schedule` None samples with the teacher's Euler sampler (`teacher_steps`, CFG `guidance`);
    a ScaleSchedule with the scale-wise sampler, without guidance. `caption_pool`: a larger
    set the captions come from, encoded (and cached) as a whole so that every N reuses one cache.
    """
    from tqdm.auto import tqdm

    from swd.data.text import empty_prompt
    from swd.models import TextCondition, adapter_for
    from swd.runtime import autocast_context
    from swd.sampling import TeacherSampler, make_generator, sample

    if batch_size < 1:
        raise SwdError(f"batch_size: must be positive, got {batch_size}")
    if schedule is None and (teacher_steps < 1 or guidance < 0):
        raise SwdError(f"teacher_steps/guidance: need steps >= 1 and guidance >= 0, got {teacher_steps}, {guidance}")
    device = torch.device(device)
    was_training = transformer.training
    adapter = adapter_for(transformer.to(device).eval())
    size = adapter.config.sample_size
    spec = TeacherSampler(teacher_steps, guidance) if schedule is None else schedule
    if schedule is not None:
        schedule.check_model(adapter.patch_size, adapter.max_latent_size)
        size = schedule.final_size[0]
    emb = encode_pooled_rows(captions, max_length=text_tokens, pool=caption_pool, full=True)
    uncond = empty_prompt(max_length=text_tokens)
    uncond = TextCondition(uncond.states, uncond.pooled).to(device)
    generator = make_generator(seed)
    out = []
    elapsed = 0.0
    for start in tqdm(range(0, len(captions), batch_size), desc="sampling", unit="batch", disable=not progress):
        rows = slice(start, start + batch_size)
        cond = TextCondition(emb.states[rows], emb.pooled[rows]).to(device)
        began = time.perf_counter()
        with autocast_context(device, precision):
            x = sample(adapter, spec, cond, uncond, generator, device, size=(size, size))
        x = x.float().clamp(-1, 1).cpu()  # .cpu() waits for the device: the timing is honest
        elapsed += time.perf_counter() - began
        out.append(x)
    transformer.train(was_training)  # a trainer's model goes back as it came
    return torch.cat(out), elapsed


@dataclass
class Reference:
    """The held-out real set in the evaluator's spaces: computed once, reused by every score."""

    features: torch.Tensor  # (M, 256) FD / precision-recall features
    embeds: torch.Tensor  # (M, D) joint image embeddings
    text_alignment_real: float  # the real images' own image-caption alignment, for scale
    caption_text: torch.Tensor  # (N, D) joint text embeddings of the prompts the samples were made from
    size: int | None = None  # the sample size the real set was brought to (None: as stored)


def at_sample_size(images: torch.Tensor, size: int | None, full: int) -> torch.Tensor:
    """Images brought to `size` px and back to the evaluator's `full` px.

    A model sampling below the data's size (the 32 px UNet teacher on 64 px data) is scored
    against real images carrying the same loss of detail: the real set is area-downscaled to
    `size` (as the trainer builds its targets) and both sides are upsampled bilinearly, so FD
    measures what the model draws, not the missing resolution.
    """
    from swd.sampling import upsample

    if size is None or size == full:
        return images
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
    return upsample(images, (full, full), mode="bilinear").clamp(-1, 1)


def sample_size_of(images: torch.Tensor, prompts: PromptSet) -> int | None:
    """The generated images' size where it differs from the real set's, else None (as stored)."""
    size = images.shape[-1]
    return None if size == prompts.real_images.shape[-1] else size


@torch.no_grad()
def reference_for(prompts: PromptSet, evaluator, size: int | None = None) -> Reference:
    """`size`: the generated images' size when it differs from the real set's (`at_sample_size`)."""
    from swd.eval.evaluator import extract
    from swd.eval.metrics import text_alignment

    def text_embeds(captions: list[str]) -> torch.Tensor:
        pooled = encode_pooled_rows(captions, evaluator.cfg.text_max_length, prompts.real_captions)
        return evaluator.text_embed(pooled.to(evaluator.device)).cpu()

    full = prompts.real_images.shape[-1]
    real = at_sample_size(prompts.real_images, size, full)
    features, embeds = extract(evaluator, real, what="both")
    return Reference(features, embeds, text_alignment(embeds, text_embeds(prompts.real_captions)),
                     text_embeds(prompts.captions), None if size == full else size)


def evaluator_for(prompts: PromptSet):
    """The shipped evaluator of the prompt set's data (the emoji one if it has none)."""
    from swd.eval.evaluator import evaluator_available, load_evaluator

    return load_evaluator(data=prompts.data if evaluator_available(prompts.data) else "emoji")


@torch.no_grad()
def score_samples(images: torch.Tensor, prompts: PromptSet, evaluator=None, seed: int = 0,
                  reference: Reference | None = None, lap_swd: bool = True) -> dict[str, Any]:
    """All metrics of generated images (aligned with `prompts.captions`) against the reference.

    `reference`: `reference_for(prompts, evaluator)` computed beforehand (a trainer scoring many
    times passes it); `lap_swd` False skips the network-free metric (seconds on a CPU).
    """
    from swd.eval.evaluator import extract
    from swd.eval.metrics import (
        frechet_distance,
        lap_sliced_wasserstein,
        precision_recall,
        shapes_accuracy,
        text_alignment,
    )

    if len(images) != len(prompts.captions):
        raise SwdError(f"images: {len(images)} images for {len(prompts.captions)} prompts")
    if evaluator is None:
        evaluator = evaluator_for(prompts)
    full, size = prompts.real_images.shape[-1], sample_size_of(images, prompts)
    if reference is None or reference.size != size:
        reference = reference_for(prompts, evaluator, size)
    scored = at_sample_size(images, size, full)
    fake_f, fake_e = extract(evaluator, scored, what="both")
    result: dict[str, Any] = {
        "evaluator": evaluator.cfg.data,
        "n_fake": len(images),
        "n_real": len(prompts.real_images),
        "scored_at": size or full,  # px the comparison is made at (at_sample_size)
        "fd": frechet_distance(reference.features, fake_f) if len(images) >= 2 else None,
        "text_alignment": text_alignment(fake_e, reference.caption_text),
        "text_alignment_real": reference.text_alignment_real,
    }
    if len(images) > 3:
        result.update(precision_recall(reference.features, fake_f, k=3))
    else:
        result.update(precision=None, recall=None)
    if lap_swd:
        lap = lap_sliced_wasserstein(at_sample_size(prompts.real_images, size, full), scored, seed=seed)
        result["lap_swd"] = lap["mean"]
        result["lap_swd_levels"] = {str(k): v for k, v in lap["levels"].items()}
    if prompts.samples is not None:
        result["shapes"] = shapes_accuracy(images, prompts.samples)
    return result


class TrainingEvaluation:
    """FD and the other metrics of a model in training, on a fixed set of held-out prompts.

    The prompts, evaluator and real-set reference are prepared once; each call samples `n`
    images with the same seed (so successive calls differ only by the weights) and scores them
    without the Laplacian SWD. Used by `swd distill` (`train.eval_every`).
    """

    def __init__(self, prompts: str, n: int, seed: int = 0, batch_size: int = 32, text_tokens: int = DEFAULT_TEXT_TOKENS,
                 data_path: str | Path | None = None):
        self.prompts = load_prompts(prompts, n, data_path)
        self.evaluator = evaluator_for(self.prompts)
        self.reference = reference_for(self.prompts, self.evaluator)
        self.seed, self.batch_size, self.text_tokens = seed, batch_size, text_tokens

    def __call__(self, transformer: torch.nn.Module, schedule, device="cpu", precision: str = "bf16") -> dict[str, Any]:
        images, seconds = sample_images(transformer, self.prompts.captions, schedule, seed=self.seed,
                                        batch_size=self.batch_size, text_tokens=self.text_tokens, device=device,
                                        precision=precision, progress=False, caption_pool=self.prompts.real_captions)
        size = sample_size_of(images, self.prompts)
        if self.reference.size != size:  # a model sampling below the data's size: prepare once
            self.reference = reference_for(self.prompts, self.evaluator, size)
        metrics = score_samples(images, self.prompts, self.evaluator, seed=self.seed, reference=self.reference,
                                lap_swd=False)
        metrics.pop("evaluator")
        if "shapes" in metrics:
            metrics["shapes"] = metrics["shapes"]["accuracy"]
        return {**metrics, "sampling_seconds": round(seconds, 3)}


def training_evaluation(cfg) -> Callable[..., dict[str, Any]]:
    """The in-training evaluation of a distillation run (a DistillConfig with `train.eval_every` > 0),
    for `train_distill(..., evaluation=)`: the testbed's held-out prompts of the run's data.

    Checked now; the prompts, evaluator and reference are prepared on the first call, which only
    the main process makes.
    """
    prompts = next((name for name, data in PROMPT_DATA.items() if data == cfg.data.name), None)
    if cfg.model.arch != "testbed" or prompts is None:
        raise SwdError(f"train.eval_every: in-training evaluation scores the pixel-space testbed on its held-out "
                       f"prompts (data emoji or shapes), not arch {cfg.model.arch} with data {cfg.data.name}; set it to 0")
    tc, prepared = cfg.train, []

    def evaluate(model, schedule, device="cpu", precision: str = "bf16") -> dict[str, Any]:
        if not prepared:
            prepared.append(TrainingEvaluation(prompts, tc.eval_n, seed=tc.seed, text_tokens=cfg.data.text_tokens,
                                               data_path=cfg.data.path or None))
        return prepared[0](model, schedule, device, precision)

    return evaluate


def evaluate_model(
    model: str | Path | torch.nn.Module,
    schedule: str | None = MODEL_SCHEDULE,
    prompts: str = "emoji-heldout",
    n: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    teacher_steps: int = 28,
    guidance: float = 4.5,
    text_tokens: int | None = None,
    device: str = "auto",
    precision: str = "bf16",
    evaluator=None,
    out: str | Path | None = None,
    data_path: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample `n` images of a testbed model for a prompt set and score them; see the module doc.

    `schedule`: "model" (the folder's schedule.yaml), a preset name, a schedule file, or
    "teacher" (multistep Euler with CFG). `out`: a folder for metrics.json and samples.png.
    Returns the metrics with every setting, the seed and the timings.
    """
    from swd.runtime import pick_device

    began = time.perf_counter()
    transformer, folder = load_model(model)
    if getattr(transformer.config, "in_channels", None) != 3:
        raise SwdError(f"model: expected a 3-channel pixel-space testbed model, got in_channels={transformer.config.in_channels}")
    sched = resolve_eval_schedule(schedule, folder)
    tokens = text_tokens if text_tokens is not None else text_tokens_of(folder)
    prompt_set = load_prompts(prompts, n, data_path)
    dev = pick_device(device)
    images, sampling_seconds = sample_images(
        transformer, prompt_set.captions, sched, seed=seed, batch_size=batch_size, text_tokens=tokens,
        teacher_steps=teacher_steps, guidance=guidance, device=dev, precision=precision, progress=progress,
        caption_pool=prompt_set.real_captions,
    )
    metrics = score_samples(images, prompt_set, evaluator, seed=seed)
    from swd.eval.flops import model_sampling_flops

    flops = model_sampling_flops(transformer, sched, tokens, teacher_steps, guidance if sched is None else 1.0)
    result = {
        "model": str(folder) if folder is not None else type(transformer).__name__,
        "schedule": TEACHER if sched is None else sched.to_dict(),
        "prompts": prompts,
        "n": n,
        "seed": seed,
        "batch_size": batch_size,
        "text_tokens": tokens,
        "teacher_steps": teacher_steps if sched is None else None,
        "guidance": guidance if sched is None else 1.0,
        "device": str(dev),
        "precision": precision if dev.type == "cuda" else "fp32",
        "metrics": metrics,
        "sampling_seconds": round(sampling_seconds, 3),
        "sampling_seconds_per_image": sampling_seconds / n,
        "flops_per_image": flops,  # transformer FLOPs of one image's sampling run (swd.eval.flops)
        "wall_seconds": None,
    }
    if out is not None:
        from swd.images import save_grid, save_strip

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        k = min(GRID_IMAGES, n)
        save_grid(images[:k], out / "samples.png", labels=prompt_set.captions[:k])
        save_strip(images, out / "strip.png")  # the first 8, for the report's side-by-side picture
        result["grid"] = str(out / "samples.png")
    result["wall_seconds"] = round(time.perf_counter() - began, 3)
    if out is not None:
        (Path(out) / "metrics.json").write_text(json.dumps(_jsonable(result), indent=2, ensure_ascii=False))
    return result


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
