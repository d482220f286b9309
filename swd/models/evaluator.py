"""The evaluator network: a small ResNet over 64 px images with a joint image-text space.

Its weights, training and the metrics built on it live in `swd.eval.evaluator`; see there (and
docs/EVALUATOR.md) for what it is trained on and what its numbers mean. This module is the
architecture only: `EvaluatorConfig` (saved as the weights' config.json) and `Evaluator`, whose
`features(x)` give the Fréchet-distance space and `image_embed` / `text_embed` the alignment score.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swd.errors import SwdError

IMAGE_SIZE = 64
TEXT_DIM = 384  # MiniLM hidden size
TEXT_MAX_LENGTH = 24  # evaluator's caption length: no emoji caption is truncated at 24 tokens


@dataclass
class EvaluatorConfig:
    """Architecture and label vocabularies; `record` holds how it was trained and what it scored."""

    data: str = "emoji"
    widths: tuple[int, ...] = (16, 32, 64, 128)  # channels of the 4 stages (32, 16, 8, 4 px)
    depths: tuple[int, ...] = (1, 2, 2, 1)  # residual blocks per stage
    feature_dim: int = 256  # a 1x1 conv widens the last stage to this before pooling
    joint_dim: int = 128  # image-text embedding width
    text_dim: int = TEXT_DIM
    text_max_length: int = TEXT_MAX_LENGTH
    heads: dict[str, list[str]] = field(default_factory=dict)  # softmax heads: name -> class names
    multilabel: dict[str, list[str]] = field(default_factory=dict)  # sigmoid heads: name -> names
    record: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> EvaluatorConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SwdError(f"evaluator config: unknown key(s) {unknown}")
        data = dict(data)
        for key in ("widths", "depths"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


class ResBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity, then ReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Evaluator(nn.Module):
    """Small ResNet over 64 px images with a joint image-text space and classification heads."""

    def __init__(self, cfg: EvaluatorConfig):
        super().__init__()
        if len(cfg.widths) != len(cfg.depths):
            raise SwdError(f"evaluator: {len(cfg.widths)} widths but {len(cfg.depths)} depths")
        self.cfg = cfg
        w = cfg.widths
        layers: list[nn.Module] = [_down(3, w[0])]  # 64 -> 32 px
        for i, (c, d) in enumerate(zip(w, cfg.depths)):
            if i > 0:
                layers.append(_down(w[i - 1], c))  # halve the size, widen
            layers += [ResBlock(c) for _ in range(d)]
        layers += [nn.Conv2d(w[-1], cfg.feature_dim, 1, bias=False), nn.BatchNorm2d(cfg.feature_dim), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.image_proj = nn.Linear(cfg.feature_dim, cfg.joint_dim)
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, 2 * cfg.joint_dim), nn.GELU(), nn.Linear(2 * cfg.joint_dim, cfg.joint_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.feature_dim, len(v)) for k, v in cfg.heads.items()})
        self.multilabel = nn.ModuleDict({k: nn.Linear(cfg.feature_dim, len(v)) for k, v in cfg.multilabel.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim): the FD / precision-recall space."""
        return self.trunk(prepare_images(x)).mean((2, 3))

    def image_embed(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Unit image embeddings (B, joint_dim); pass `features` to skip the trunk."""
        f = self.features(x) if features is None else features
        return F.normalize(self.image_proj(f), dim=-1)

    def text_embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings (B, joint_dim) from pooled MiniLM states (B, 384)."""
        if pooled.ndim != 2 or pooled.shape[1] != self.cfg.text_dim:
            raise SwdError(f"pooled: expected (B, {self.cfg.text_dim}) MiniLM embeddings, got {tuple(pooled.shape)}")
        return F.normalize(self.text_proj(pooled.float()), dim=-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """features, embed and every head's logits (keys "head/<name>", "multi/<name>")."""
        f = self.features(x)
        out = {"features": f, "embed": self.image_embed(x, f)}
        out.update({f"head/{k}": h(f) for k, h in self.heads.items()})
        out.update({f"multi/{k}": h(f) for k, h in self.multilabel.items()})
        return out

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def prepare_images(x) -> torch.Tensor:
    """Images as float (B, 3, 64, 64) in [-1, 1]: uint8 (B, H, W, 3) or (B, 3, H, W) is mapped
    from [0, 255], other sizes
    are resized (area when shrinking, bilinear when growing)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise SwdError(f"images: expected a tensor or array, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
            raise SwdError(f"images: uint8 images must be (B, H, W, 3) or (B, 3, H, W), got {tuple(x.shape)}")
        x = (x if x.shape[1] == 3 else x.permute(0, 3, 1, 2)).float() / 127.5 - 1.0
    if x.ndim != 4 or x.shape[1] != 3:
        raise SwdError(f"images: expected (B, 3, H, W), got {tuple(x.shape)}")
    x = x.float()
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        mode = "area" if x.shape[-1] > IMAGE_SIZE else "bilinear"
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return x
