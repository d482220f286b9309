"""Architectures as plain data: the real SD3.5 / FLUX transformer configs and tiny test ones.

Real-size configs are used to build models on the meta device (FLOP counts, memory estimates)
or with random weights on a GPU (latency); no weights are downloaded. The numbers are those of
the public diffusers `transformer/config.json` files of each model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swd.errors import SwdError


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # "sd3", "flux", "unet" or "wan"
    transformer: dict  # kwargs of the diffusers transformer class
    text_tokens: int  # encoder sequence length the model is used with
    vae_scaling_factor: float = 1.0
    vae_shift_factor: float = 0.0
    vae_downsample: int = 8  # pixels per latent pixel
    default_schedule: str = ""
    feature_block: int = 0  # block whose image tokens feed MMD / GAN (SWD_SPEC section 4)
    teacher_cfg: float = 1.0
    teacher_steps: int = 28  # the teacher's default sampling steps (SD3.5: 28; Wan2.1: 50)
    notes: str = field(default="", compare=False)

    def build(self, device=None, dtype=None):
        """The diffusers transformer with random weights (pass device='meta' for no memory).

        `dtype` creates the weights in that type directly: FLUX-dev built in float32 and then cast
        would need 48 + 24 GB at once, more than an 80 GB GPU holds beside the activations. It
        sets torch's process-wide default dtype for the duration of the build (restored after,
        also on errors), so do not build from several threads at once. Buffers that diffusers
        creates as float32 explicitly (SD3's positional embedding) stay float32.
        """
        import contextlib

        import torch

        cls = transformer_class(self.family)
        previous = torch.get_default_dtype()
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                return cls(**self.transformer)
        finally:
            torch.set_default_dtype(previous)


def transformer_class(family: str):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel, WanTransformer3DModel

    return {"sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel, "unet": UNet2DConditionModel,
            "wan": WanTransformer3DModel}[family]


_SD3_COMMON = dict(in_channels=16, out_channels=16, patch_size=2, attention_head_dim=64,
                   joint_attention_dim=4096, pooled_projection_dim=2048, qk_norm="rms_norm",
                   sample_size=128)

_WAN_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                   freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                   rope_max_seq_len=1024)

ARCHS: dict[str, ArchSpec] = {
    "sd35-large": ArchSpec(
        name="sd35-large", family="sd3",
        transformer=dict(_SD3_COMMON, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                         pos_embed_max_size=192),
        text_tokens=333,  # 77 CLIP + 256 T5 tokens
        vae_scaling_factor=1.5305, vae_shift_factor=0.0609,
        default_schedule="sd35-large-4", feature_block=20, teacher_cfg=4.5,
        notes="SD3.5 Large, 8.1B parameters",
    ),
    "sd35-medium": ArchSpec(
        name="sd35-medium", family="sd3",
        transformer=dict(_SD3_COMMON, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                         pos_embed_max_size=384, dual_attention_layers=tuple(range(13))),
        text_tokens=333,
        vae_scaling_factor=1.5305, vae_shift_factor=0.0609,
        default_schedule="sd35-medium-6", feature_block=11, teacher_cfg=7.0,
        notes="SD3.5 Medium (MMDiT-X), 2.2B parameters",
    ),
    "flux-dev": ArchSpec(
        name="flux-dev", family="flux",
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                         pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        text_tokens=512,  # T5 tokens of FLUX-dev
        vae_scaling_factor=0.3611, vae_shift_factor=0.1159,
        default_schedule="flux-dev-4", feature_block=20, teacher_cfg=1.0,
        notes="FLUX.1-dev, 11.9B parameters, embedded guidance",
    ),
    # Wan2.1 text-to-video: the diffusers transformer/config.json of Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers
    # (patch (1, 2, 2), head width 128, UMT5 text width 4096, 512 text tokens). The teacher is
    # WanPipeline's default: 50 steps with CFG 5.0 (two forwards per step).
    "wan2.1-1.3b": ArchSpec(
        name="wan2.1-1.3b", family="wan",
        transformer=dict(_WAN_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30),
        text_tokens=512, default_schedule="wan-4", feature_block=15, teacher_cfg=5.0, teacher_steps=50,
        notes="Wan2.1 T2V 1.3B",
    ),
    "wan2.1-14b": ArchSpec(
        name="wan2.1-14b", family="wan",
        transformer=dict(_WAN_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40),
        text_tokens=512, default_schedule="wan-4", feature_block=20, teacher_cfg=5.0, teacher_steps=50,
        notes="Wan2.1 T2V 14B",
    ),
    # Tiny random configs for tests: same code paths, seconds on a CPU.
    "tiny-sd3": ArchSpec(
        name="tiny-sd3", family="sd3",
        transformer=dict(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                         caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=16),
        text_tokens=6, default_schedule="", feature_block=0,
    ),
    "tiny-flux": ArchSpec(
        name="tiny-flux", family="flux",
        transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                         pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4)),
        text_tokens=6, default_schedule="", feature_block=1,
    ),
    # The moving-shapes video testbed's teacher: Wan's architecture in pixel space (3 channels,
    # patch 1x4x4, 9 x 32 x 32 clips = 576 tokens), MiniLM caption states (16 x 384).
    "moving-shapes-wan": ArchSpec(
        name="moving-shapes-wan", family="wan",
        transformer=dict(patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=32, in_channels=3,
                         out_channels=3, text_dim=384, freq_dim=64, ffn_dim=512, num_layers=6, rope_max_seq_len=64),
        text_tokens=16, vae_downsample=1, default_schedule="moving-shapes-4", feature_block=3, teacher_cfg=4.5,
        notes="pixel-space video testbed teacher (scripts/moving_shapes_teacher.py)",
    ),
    "tiny-wan": ArchSpec(
        name="tiny-wan", family="wan",
        # 16 latent channels: the z_dim of AutoencoderKLWan (its latents_mean/std have 16 entries).
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                         out_channels=16, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                         rope_max_seq_len=32),
        text_tokens=6, default_schedule="", feature_block=0, teacher_steps=50, teacher_cfg=5.0,
    ),
}


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise SwdError(f"arch: unknown {name!r}; choose one of {', '.join(ARCHS)}") from None
