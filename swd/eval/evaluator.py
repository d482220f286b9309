"""The project's own image evaluator: a small CNN (`swd.models.evaluator`) trained here on the
testbed's training split; this module loads, saves and trains it and extracts features.

No pretrained Inception or CLIP can be had offline, so quality metrics use a network trained
here and shipped with the package (`swd/eval/weights/evaluator-<data>/`). It gives

- `features(x)`: a 256-dim penultimate vector per image (global mean of the last conv stage),
  the feature space of the Fréchet distance and of precision/recall (the pool3 analogue);
- `image_embed(x)` / `text_embed(pooled)`: unit vectors in a joint image-text space, trained
  CLIP-style (symmetric InfoNCE) against FROZEN MiniLM caption embeddings (masked mean over
  tokens, 384-dim): their cosine is the text-alignment score (the CLIP-score analogue);
- classification heads used only as training signal and for reporting: concept, emoji
  category/subcategory (from emoji-datasource's tables when installed) and style for emoji;
  object count and shape/colour presence for shapes.

Numbers from this network are comparable only with numbers from the same weights: they are not
FID or CLIP score. The network reads (B, 3, 64, 64) images in [-1, 1]; other sizes are resized.

Files: `config.json` (architecture, label names, training record and measured accuracy) and
`model-0000k-of-0000n.safetensors` shards (none over `MAX_SHARD_BYTES`), float32.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from swd.errors import SwdError
from swd.models.evaluator import TEXT_MAX_LENGTH, Evaluator, EvaluatorConfig, prepare_images

MAX_SHARD_BYTES = 8 * 1024 * 1024
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CONFIG_NAME = "config.json"
DATASETS = ("emoji", "shapes")


@torch.no_grad()
def extract(evaluator: Evaluator, images, batch_size: int = 256, what: str = "features") -> torch.Tensor:
    """`features` (B, 256) or unit `embed` (B, joint) of many images, batched, on CPU float32."""
    if what not in ("features", "embed", "both"):
        raise SwdError(f"what: expected features, embed or both, got {what!r}")
    was_training = evaluator.training
    evaluator.eval()
    feats, embeds = [], []
    for start in range(0, len(images), batch_size):
        x = prepare_images(images[start : start + batch_size]).to(evaluator.device)
        f = evaluator.features(x)
        feats.append(f.float().cpu())
        if what != "features":
            embeds.append(evaluator.image_embed(x, f).float().cpu())
    evaluator.train(was_training)
    empty_f = torch.zeros(0, evaluator.cfg.feature_dim)
    f = torch.cat(feats) if feats else empty_f
    e = torch.cat(embeds) if embeds else torch.zeros(0, evaluator.cfg.joint_dim)
    return {"features": f, "embed": e, "both": (f, e)}[what]


@torch.no_grad()
def embed_captions(evaluator: Evaluator, captions: list[str], cache_dir: str | Path | None = None) -> torch.Tensor:
    """Unit text embeddings (B, joint) of captions (MiniLM pooled, cached on disk, then projected)."""
    from swd.data.text import encode_captions

    pooled = encode_captions(list(captions), max_length=evaluator.cfg.text_max_length, cache_dir=cache_dir).pooled
    return evaluator.text_embed(pooled.to(evaluator.device)).float().cpu()


def default_evaluator_dir(data: str = "emoji") -> Path:
    return WEIGHTS_DIR / f"evaluator-{data}"


def save_evaluator(evaluator: Evaluator, folder: str | Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write config.json and float32 safetensors shards of at most `max_shard_bytes` each."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("model-*.safetensors"):
        old.unlink()
    state = {k: v.detach().float().cpu().contiguous() for k, v in evaluator.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > max_shard_bytes:
            raise SwdError(f"evaluator: tensor {key} ({nbytes} bytes) exceeds the shard size {max_shard_bytes}")
        if size + nbytes > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for i, shard in enumerate(shards):
        file = folder / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(file))
        file.chmod(0o644)  # safetensors writes 0600; these files ship in the package
    (folder / CONFIG_NAME).write_text(evaluator.cfg.to_json())
    return folder


def load_evaluator(path: str | Path | None = None, data: str = "emoji", device: str | torch.device = "cpu") -> Evaluator:
    """The evaluator at `path`, or the one shipped in the package for `data`; in eval mode."""
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else default_evaluator_dir(data)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        hint = "" if path is not None else f"; train one with `swd eval train-evaluator --data {data}`"
        raise SwdError(f"evaluator: no {CONFIG_NAME} in {folder}{hint}")
    cfg = EvaluatorConfig.from_dict(json.loads(config_file.read_text()))
    model = Evaluator(cfg)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        state.update(load_file(str(shard)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SwdError(f"evaluator: weights in {folder} do not match its config "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()


def evaluator_available(data: str = "emoji") -> bool:
    return (default_evaluator_dir(data) / CONFIG_NAME).is_file()


# Training ------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    data: str = "emoji"
    steps: int = 750  # ~10 epochs of the emoji training split; ~0.8 s/step on 2 idle cores
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    val_fraction: float = 0.05  # of the training split, reserved to measure held-in accuracy
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 2


@dataclass
class LabelledData:
    """Images and integer labels of one split (-1: unknown label, ignored by the loss)."""

    images: torch.Tensor  # (N, 3, 64, 64) uint8
    captions: list[str]
    pooled: torch.Tensor  # (N, 384) MiniLM pooled caption embeddings
    labels: dict[str, torch.Tensor]  # head -> (N,) int64
    multi: dict[str, torch.Tensor]  # head -> (N, K) float 0/1


def emoji_categories() -> dict[str, tuple[str, str]]:
    """Concept key -> (category, subcategory) from npm emoji-datasource-twitter; {} if absent."""
    from swd.data.emoji import TWITTER_PACKAGE, find_npm_package

    root = find_npm_package(TWITTER_PACKAGE)
    if root is None:
        return {}
    table = {}
    for entry in json.loads((root / "emoji.json").read_text()):
        labels = (entry["category"], entry["subcategory"])
        for item in [entry, *entry.get("skin_variations", {}).values()]:
            table["-".join(p.lower() for p in item["unified"].split("-") if p.lower() != "fe0f")] = labels
    return table


def _vocab_labels(values: list[str | None], vocab: list[str]) -> torch.Tensor:
    index = {v: i for i, v in enumerate(vocab)}
    return torch.tensor([index.get(v, -1) if v is not None else -1 for v in values], dtype=torch.long)


def build_label_space(data: str, records: list[dict]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Class names of every head, from the training records (sorted, so deterministic)."""
    if data == "emoji":
        heads = {
            "concept": sorted({r["name"] for r in records}),
            "style": sorted({r["style"] for r in records}),
        }
        table = emoji_categories()
        if table:
            heads["category"] = sorted({table[r["key"]][0] for r in records if r["key"] in table})
            heads["subcategory"] = sorted({table[r["key"]][1] for r in records if r["key"] in table})
        return heads, {}
    from swd.data.shapes import COLORS, SHAPES

    # No category head: "a star" and "a red star" (or two objects with and without a relation)
    # draw the same kind of image, so a caption's category cannot be read from its pixels.
    heads = {"count": ["1", "2", "3", "4"]}
    return heads, {"shape": list(SHAPES), "color": list(COLORS)}


def label_records(data: str, records: list[dict], heads: dict, multilabel: dict) -> tuple[dict, dict]:
    labels, multi = {}, {}
    if data == "emoji":
        table = emoji_categories()
        values = {
            "concept": [r["name"] for r in records],
            "style": [r["style"] for r in records],
            "category": [table.get(r["key"], (None, None))[0] for r in records],
            "subcategory": [table.get(r["key"], (None, None))[1] for r in records],
        }
    else:
        values = {"count": [str(len(r["objects"])) for r in records]}
        for name, attr in (("shape", "shape"), ("color", "color")):
            vocab = multilabel[name]
            m = torch.zeros(len(records), len(vocab))
            for i, r in enumerate(records):
                for o in r["objects"]:
                    m[i, vocab.index(o[attr])] = 1.0
            multi[name] = m
    for name, vocab in heads.items():
        labels[name] = _vocab_labels(values[name], vocab)
    return labels, multi


def load_image_set(data: str):
    if data == "emoji":
        from swd.data.emoji import load_emoji

        return load_emoji()
    if data == "shapes":
        from swd.data.shapes import load_shapes

        return load_shapes()[0]
    raise SwdError(f"data: unknown {data!r}; choose from {', '.join(DATASETS)}")


def make_split(data: str, image_set, pooled: torch.Tensor, split: str, heads, multilabel, rows=None) -> LabelledData:
    """Rows of one split of `image_set`; `pooled` holds the caption embeddings of the whole set
    (encoded once: the text cache is keyed by the set of captions)."""
    index = [i for i, r in enumerate(image_set.records) if r["split"] == split]
    index = index if rows is None else [index[i] for i in rows]
    records = [image_set.records[i] for i in index]
    labels, multi = label_records(data, records, heads, multilabel)
    images = torch.from_numpy(np.ascontiguousarray(image_set.images[index])).permute(0, 3, 1, 2).contiguous()
    return LabelledData(images, [r["caption"] for r in records], pooled[index], labels, multi)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation of (B, 3, H, W) in [-1, 1]: shifts of up to 3 px, scale 0.92-1.08 (white
    fill), and mild colour jitter. No blur or noise: the features must stay sensitive to those."""
    b = x.shape[0]
    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:  # per-image uniform draws
        return torch.rand(b, *shape, generator=gen) * (hi - lo) + lo
    scale = u(0.92, 1.08)
    shift = u(-3, 3, 2) * (2 / x.shape[-1])  # px -> normalised coordinates
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample x - 1 so the zero padding outside the image is white (1 in [-1, 1]).
    x = F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * u(0.8, 1.2, 1, 1, 1)  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(0.85, 1.15, 1, 1, 1)  # contrast
    x = x + u(-0.08, 0.08, 1, 1, 1)  # brightness
    return x.clamp(-1, 1)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched pairs (row i with row i), CLIP's loss."""
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T  # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def training_loss(model: Evaluator, x: torch.Tensor, pooled: torch.Tensor, labels: dict, multi: dict,
                  label_smoothing: float) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(x)
    text = model.text_embed(pooled)
    parts = {"clip": contrastive_loss(out["embed"], text, model.logit_scale)}
    for name, y in labels.items():
        if (y >= 0).any():
            parts[name] = F.cross_entropy(out[f"head/{name}"], y, ignore_index=-1, label_smoothing=label_smoothing)
    for name, y in multi.items():
        parts[name] = F.binary_cross_entropy_with_logits(out[f"multi/{name}"], y)
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def measure(model: Evaluator, split: LabelledData, batch_size: int = 256) -> dict[str, float]:
    """Accuracy of every head with labels, and image<->text retrieval among the split's captions."""
    model.eval()
    feats, emb = extract(model, split.images, batch_size, what="both")
    result: dict[str, float] = {"images": len(split.captions)}
    for name, y in split.labels.items():
        known = y >= 0
        if known.any():
            pred = model.heads[name](feats[known]).argmax(-1)
            result[f"{name}_accuracy"] = float((pred == y[known]).float().mean())
    for name, y in split.multi.items():
        pred = (model.multilabel[name](feats) > 0).float()
        result[f"{name}_exact_match"] = float((pred == y).all(-1).float().mean())
    result.update(retrieval(emb, model.text_embed(split.pooled), split.captions))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}


def retrieval(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Top-1/top-5 image->text and text->image retrieval among the distinct captions.

    Images sharing a caption share its text row; a hit is the image's own caption among the k
    most similar distinct captions (image->text), or one of its images among the k nearest
    images of a caption (text->image).
    """
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    first = [captions.index(c) for c in unique]
    text = text_emb[first]  # (U, D)
    target = torch.tensor([row[c] for c in captions])  # (N,)
    sims = image_emb @ text.T  # (N, U)
    k = min(5, len(unique))
    top = sims.topk(k, dim=1).indices
    i2t1 = (top[:, 0] == target).float().mean()
    i2t5 = (top == target[:, None]).any(1).float().mean()
    topi = sims.T.topk(min(5, len(captions)), dim=1).indices  # (U, k) image indices
    hit = target[topi] == torch.arange(len(unique))[:, None]
    return {
        "retrieval_captions": len(unique),
        "i2t_top1": float(i2t1), "i2t_top5": float(i2t5),
        "t2i_top1": float(hit[:, 0].float().mean()), "t2i_top5": float(hit.any(1).float().mean()),
    }


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    t = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def train_evaluator(s: TrainSettings, out: str | Path | None = None, progress: bool = True,
                    command: str = "", image_set=None) -> tuple[Evaluator, dict]:
    """Train an evaluator on the training split (less a reserved `val_fraction`), measure it on the
    reserved images and on the held-out split, save it to `out` (default: the shipped location)."""
    from tqdm.auto import tqdm

    from swd.data.text import encode_captions

    if s.data not in DATASETS:
        raise SwdError(f"data: unknown {s.data!r}; choose from {', '.join(DATASETS)}")
    if s.steps < 1 or s.batch_size < 2:
        raise SwdError(f"steps/batch_size: need steps >= 1 and batch_size >= 2, got {s.steps}, {s.batch_size}")
    if not 0 < s.val_fraction < 1:
        raise SwdError(f"val_fraction: must lie in (0, 1), got {s.val_fraction}")
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    started = time.perf_counter()
    torch.manual_seed(s.seed)
    image_set = load_image_set(s.data) if image_set is None else image_set
    train_part = image_set.select("train")
    if len(train_part) < 2 * s.batch_size:
        raise SwdError(f"data: {len(train_part)} training images are too few for batch_size {s.batch_size}")
    order = np.random.default_rng(s.seed).permutation(len(train_part))
    n_val = max(1, round(s.val_fraction * len(train_part)))
    heads, multilabel = build_label_space(s.data, train_part.records)
    pooled = encode_captions(image_set.captions, max_length=TEXT_MAX_LENGTH).pooled
    fit = make_split(s.data, image_set, pooled, "train", heads, multilabel, rows=sorted(order[n_val:]))
    val = make_split(s.data, image_set, pooled, "train", heads, multilabel, rows=sorted(order[:n_val]))
    held = make_split(s.data, image_set, pooled, "heldout", heads, multilabel)
    data_seconds = time.perf_counter() - started

    cfg = EvaluatorConfig(data=s.data, heads=heads, multilabel=multilabel)
    model = Evaluator(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr)
    gen = torch.Generator().manual_seed(s.seed)
    n = len(fit.captions)
    perm, cursor = torch.randperm(n, generator=gen), 0
    bar = tqdm(range(s.steps), desc="evaluator", unit="step", disable=not progress)
    train_started = time.perf_counter()
    model.train()
    for step in bar:
        if cursor + s.batch_size > n:  # a fresh epoch
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + s.batch_size]
        cursor += s.batch_size
        x = augment(fit.images[idx].float() / 127.5 - 1.0, gen)
        labels = {k: v[idx] for k, v in fit.labels.items()}
        multi = {k: v[idx] for k, v in fit.multi.items()}
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        loss, parts = training_loss(model, x, fit.pooled[idx], labels, multi, s.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == s.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", clip=f"{parts['clip']:.3f}")
    bar.close()
    train_seconds = time.perf_counter() - train_started
    model.eval()
    folder = Path(out) if out is not None else default_evaluator_dir(s.data)
    save_evaluator(model, folder)  # before measuring: a failure there must not lose the training
    metrics = {"train_reserved": measure(model, val), "heldout": measure(model, held)}
    cfg.record = {
        "command": command,
        "settings": asdict(s),
        "params": model.num_params(),
        "train_images": n,
        "reserved_images": len(val.captions),
        "heldout_images": len(held.captions),
        "train_seconds": round(train_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "metrics": metrics,
    }
    save_evaluator(model, folder)
    return model, cfg.record
