"""The testbed's small text-to-image teachers, in pixel space: an MMDiT and a UNet.

Pixel space (3 channels, no VAE) keeps the testbed cheap. The MMDiT is a diffusers
SD3Transformer2DModel and exercises SD3's real code paths: joint attention, cropped sin-cos
positions at every scale, pooled text conditioning. The UNet is a diffusers UNet2DConditionModel
with cross-attention to the text tokens: on 2 CPU cores it learns crisp shapes many times faster
per CPU minute than the MMDiT (docs/TEACHER_RECIPES.md). Text comes from MiniLM (384-dim token
states; the masked mean as the pooled vector).

`TESTBED_ARCHS` maps a config's `model.arch` to its config class and builder; a config without
`arch` is an MMDiT, so older configs and checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, NamedTuple

from swd.errors import SwdError


@dataclass
class MMDiTConfig:
    sample_size: int = 64  # largest image side, pixels
    patch_size: int = 2
    width: int = 256  # = heads * head_dim
    head_dim: int = 64
    depth: int = 8
    text_dim: int = 384  # MiniLM hidden size

    def transformer_kwargs(self) -> dict:
        if self.width % self.head_dim:
            raise SwdError(f"model.width: {self.width} must be a multiple of model.head_dim {self.head_dim}")
        if self.sample_size % self.patch_size:
            raise SwdError(f"model.sample_size: {self.sample_size} must be a multiple of model.patch_size")
        return dict(
            sample_size=self.sample_size,
            patch_size=self.patch_size,
            in_channels=3,
            out_channels=3,
            num_layers=self.depth,
            attention_head_dim=self.head_dim,
            num_attention_heads=self.width // self.head_dim,
            joint_attention_dim=self.text_dim,
            caption_projection_dim=self.width,
            pooled_projection_dim=self.text_dim,
            pos_embed_max_size=self.sample_size // self.patch_size,
        )


def build_testbed_transformer(cfg: MMDiTConfig):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**cfg.transformer_kwargs())



@dataclass
class UNetConfig:
    arch: str = "unet"  # the TESTBED_ARCHS key; kept in the dumped config so it reloads as a UNet
    sample_size: int = 32  # largest image side, pixels
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # per level, full res first
    layers_per_block: int = 1
    cross_attention: list[bool] = field(default_factory=lambda: [False, True, True])  # per level
    head_dim: int = 32  # channels per attention head (diffusers' `attention_head_dim` is a head count)
    norm_num_groups: int = 32
    text_dim: int = 384  # MiniLM hidden size
    pooled: bool = False  # also add the pooled text vector to the time embedding

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the UNet halves them once per level below the top."""
        return 2 ** (len(self.block_out_channels) - 1)

    def unet_kwargs(self) -> dict:
        """diffusers UNet2DConditionModel arguments; raises SwdError naming the field when they don't fit."""
        levels = len(self.block_out_channels)
        for name in ("sample_size", "layers_per_block", "head_dim", "norm_num_groups", "text_dim"):
            if getattr(self, name) < 1:
                raise SwdError(f"model.{name}: must be at least 1, got {getattr(self, name)}")
        if any(ch < 1 for ch in self.block_out_channels):
            raise SwdError(f"model.block_out_channels: must be positive, got {self.block_out_channels}")
        if levels < 1 or len(self.cross_attention) != levels:
            raise SwdError(f"model.cross_attention: needs one entry per level of block_out_channels "
                           f"({levels}), got {len(self.cross_attention)}")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups or ch % self.head_dim:
                raise SwdError(f"model.block_out_channels: {ch} must be a multiple of model.norm_num_groups "
                               f"{self.norm_num_groups} and model.head_dim {self.head_dim}")
        factor = self.size_multiple
        if self.sample_size % factor:
            raise SwdError(f"model.sample_size: {self.sample_size} must be a multiple of {factor} "
                           f"(the UNet halves the size {levels - 1} times)")
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.cross_attention]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.cross_attention)]
        kwargs = dict(
            sample_size=self.sample_size,
            in_channels=3,
            out_channels=3,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            mid_block_type="UNetMidBlock2DCrossAttn" if any(self.cross_attention) else "UNetMidBlock2D",
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            cross_attention_dim=self.text_dim,
            attention_head_dim=tuple(ch // self.head_dim for ch in self.block_out_channels),
        )
        if self.pooled:
            kwargs.update(class_embed_type="projection", projection_class_embeddings_input_dim=self.text_dim)
        return kwargs


def build_testbed_unet(cfg: UNetConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg.unet_kwargs())


class ArchEntry(NamedTuple):
    config: type
    build: Callable


TESTBED_ARCHS = {
    "mmdit": ArchEntry(MMDiTConfig, build_testbed_transformer),
    "unet": ArchEntry(UNetConfig, build_testbed_unet),
}


def resolve_model_config(value: Any):
    """A `model:` mapping (or an already built config) as the config of its `arch` (default mmdit)."""
    from swd.config import from_dict

    if is_dataclass(value):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SwdError(f"model: expected a mapping, got {type(value).__name__}")
    arch = value.get("arch", "mmdit")
    if arch not in TESTBED_ARCHS:
        raise SwdError(f"model.arch: unknown {arch!r}; choose one of {', '.join(TESTBED_ARCHS)}")
    cls = TESTBED_ARCHS[arch].config
    if "arch" not in {f.name for f in fields(cls)}:
        value = {k: v for k, v in value.items() if k != "arch"}
    return from_dict(cls, value, "model")


def build_testbed_model(cfg):
    """The diffusers model of a testbed model config (MMDiTConfig or UNetConfig)."""
    for arch in TESTBED_ARCHS.values():
        if isinstance(cfg, arch.config):
            return arch.build(cfg)
    raise SwdError(f"model: {type(cfg).__name__} is not a testbed model config")
