"""Tiny random SD3 / FLUX / SDXL / Wan pipeline components, built offline (no model hub), and the
call every pipeline test makes (`sample`).

Tokenizers are made in memory from a few hundred vocabulary entries: a byte-level BPE CLIP
tokenizer and a unigram T5 tokenizer. Text encoders, VAEs, transformers and UNets are random-weight
models small enough that a 4-step scale-wise run takes well under a second on a CPU.

Each test module says what differs: its `make_pipe()` (the `pipe` fixture of conftest.py builds
it once per module) and its `run()`, `sample` with the module's schedule and text length.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKL, AutoencoderKLWan, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from swd.models.configs import ARCHS
from swd.schedules import ScaleSchedule

CLIP_LENGTH = 8  # tokens per CLIP prompt (model_max_length of the tiny tokenizers)
T5_LENGTH = 6  # max_sequence_length the tests pass
VAE_FACTOR = 2  # two VAE blocks: one 2x downsampling

# Four scales, latent 8 -> 24 (image 16 -> 48 px), SwD's 4-step sigmas.
TINY_SCHEDULE = ScaleSchedule(scales=(8, 12, 16, 24), sigmas=(1.0, 0.8959, 0.7371, 0.6022), name="tiny-4")


def clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE over printable ASCII (each char with and without the end-of-word mark)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = [chr(i) for i in range(33, 127)]
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    merges = [("c", "a"), ("ca", "t</w>")]
    vocab["ca"], vocab["cat</w>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + w, -2.0) for w in ("a", "cat", "dog", "red", "blue", "photo", "of")]
    pieces += [(c, -5.0) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_encoder(hidden: int, projection: int | None, seed: int):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=200, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CLIP_LENGTH, projection_dim=projection or hidden,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval()


def t5_encoder(d_model: int, seed: int, config_class=T5Config, model_class=T5EncoderModel):
    """A one-layer T5 encoder (or UMT5, Wan's, with its config and model classes)."""
    torch.manual_seed(seed)
    config = config_class(vocab_size=40, d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=1, num_heads=2,
                          relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    return model_class(config).eval()


def tiny_vae(latent_channels: int = 4, seed: int = 3) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=8, sample_size=32,
        scaling_factor=1.5305, shift_factor=0.0609,
    ).eval()


def sd3_transformer(seed: int = 0) -> SD3Transformer2DModel:
    """ARCHS['tiny-sd3']: joint width 16 (= T5 width), pooled 8 (= 4 + 4 from the two CLIPs), max latent 32."""
    torch.manual_seed(seed)
    return ARCHS["tiny-sd3"].build().eval()


def flux_transformer(seed: int = 0) -> FluxTransformer2DModel:
    """ARCHS['tiny-flux']: joint width 16 (= T5 width), pooled 8 (= CLIP width), 4 latent channels."""
    torch.manual_seed(seed)
    return ARCHS["tiny-flux"].build().eval()


def sd3_components(with_text: bool = True) -> dict:
    parts = {"transformer": sd3_transformer(), "vae": tiny_vae()}
    if with_text:
        parts.update(
            text_encoder=clip_encoder(8, 4, seed=11), tokenizer=clip_tokenizer(),
            text_encoder_2=clip_encoder(8, 4, seed=12), tokenizer_2=clip_tokenizer(),
            text_encoder_3=t5_encoder(16, seed=13), tokenizer_3=t5_tokenizer(),
        )
    return parts


def flux_components(with_text: bool = True) -> dict:
    parts = {"transformer": flux_transformer(), "vae": tiny_vae()}
    if with_text:
        parts.update(
            text_encoder=clip_encoder(8, None, seed=21), tokenizer=clip_tokenizer(),
            text_encoder_2=t5_encoder(16, seed=22), tokenizer_2=t5_tokenizer(),
        )
    return parts


def embeddings(batch: int, tokens: int = 5, joint: int = 16, pooled: int = 8, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, joint, generator=g), torch.randn(batch, pooled, generator=g)


# Tiny SDXL: the pooled text (from the second CLIP, with projection) and 6 time ids of width 4
# feed the added embedding: projection_class_embeddings_input_dim = 8 + 6 * 4.
SDXL_TEXT, SDXL_POOLED, SDXL_TIME = 16, 8, 4


def sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """SDXL's UNet layout in miniature: cross-attention to the two CLIPs' concatenated states (8 + 8),
    addition_embed_type 'text_time'; two levels, so sizes divisible by 2 work."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), norm_num_groups=4, cross_attention_dim=SDXL_TEXT, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME,
        projection_class_embeddings_input_dim=SDXL_POOLED + 6 * SDXL_TIME, transformer_layers_per_block=(1, 1),
    ).eval()


def sdxl_components(with_text: bool = True) -> dict:
    parts = {"unet": sdxl_unet(), "vae": tiny_vae()}
    if with_text:
        parts.update(
            text_encoder=clip_encoder(8, None, seed=31), tokenizer=clip_tokenizer(),
            text_encoder_2=clip_encoder(8, SDXL_POOLED, seed=32), tokenizer_2=clip_tokenizer(),
        )
    return parts


def wan_transformer(seed: int = 0):
    """ARCHS['tiny-wan']: 16 latent channels, patch (1, 2, 2), text width 16."""
    torch.manual_seed(seed)
    return ARCHS["tiny-wan"].build().eval()


def wan_vae(seed: int = 3) -> AutoencoderKLWan:
    """Wan's causal video VAE in miniature: 16 latent channels, 4x time and 8x space downsampling."""
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def wan_components(with_text: bool = True) -> dict:
    parts = {"transformer": wan_transformer(), "vae": wan_vae()}
    if with_text:
        parts.update(text_encoder=t5_encoder(16, seed=13, config_class=UMT5Config, model_class=UMT5EncoderModel),
                     tokenizer=t5_tokenizer())
    return parts


def quiet(pipe):
    """The pipeline with its progress bar off."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, default_schedule, seed: int = 0, text_length: int | None = None, **kwargs):
    """One call on a fixed seed: latents unless output_type is given, default_schedule unless
    schedule= is. text_length: max_sequence_length passed with prompts (T5/UMT5), not with
    embeddings. Returns the images (or a video pipeline's frames)."""
    kwargs.setdefault("schedule", default_schedule)
    kwargs.setdefault("output_type", "latent")
    if text_length is not None and "prompt_embeds" not in kwargs:
        kwargs.setdefault("max_sequence_length", text_length)
    out = pipe(generator=torch.Generator().manual_seed(seed), **kwargs)
    return out.frames if hasattr(out, "frames") else out.images
