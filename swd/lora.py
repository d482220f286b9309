"""Student LoRAs in and out: PEFT (the authors' release), diffusers and ComfyUI files.

A LoRA adds `delta W = alpha / r * B @ A` to a linear layer (A: (r, in), B: (out, r)). Three
file layouts carry the same tensors under different keys:

| format | keys | scale |
|---|---|---|
| peft | `base_model.model.<module>.lora_A.weight` / `lora_B.weight` + `adapter_config.json` | config r, lora_alpha |
| diffusers | `transformer.<module>.lora_A.weight` / `lora_B.weight` (UNets: `unet.`) | `lora_adapter_metadata` header, else alpha = r |
| comfyui | `lora_transformer_<module with _ for .>.lora_down.weight` / `.lora_up.weight` / `.alpha` (UNets: `lora_unet_`) | alpha / r per module |

`<module>` is the diffusers module path, e.g. `transformer_blocks.0.attn.to_q`, or for an SDXL
UNet `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`.

Why this ComfyUI layout. ComfyUI's LoRA loader (comfy/lora.py, `model_lora_keys_unet`) maps,
for SD3 and FLUX models, diffusers module paths under these prefixes: `transformer.<path>`,
`lora_transformer_<path with underscores>` (OneTrainer's names) and `lycoris_<...>`; only SD3
also takes `base_model.model.<path>`. Its oldest and always-present suffixes are kohya's
`.lora_up.weight`/`.lora_down.weight` with an optional `.alpha`; the PEFT/diffusers suffixes
`.lora_B.weight`/`.lora_A.weight` are read only by newer versions, which is likely why the
authors' PEFT file did not load for users (SWD_SPEC section 6), and FLUX has no
`base_model.model.` mapping at all. The kohya prefix `lora_unet_<path>` is NOT an option here:
for SD3 and FLUX it maps ComfyUI's own module names (fused `joint_blocks_0_x_block_attn_qkv`,
`double_blocks_0_img_attn_qkv`), not diffusers paths. So the export writes
`lora_transformer_<path>` keys with kohya suffixes and a per-module alpha: one layout for both
families, and ComfyUI applies separate q/k/v LoRAs to the right slices of its fused qkv weights.
The diffusers export (`transformer.` + lora_A/lora_B) also loads in recent ComfyUI versions.

UNets (SDXL) are the other way round: there ComfyUI maps `lora_unet_<diffusers UNet path with
underscores>` (its `unet_to_diffusers` table) and `unet.<path>` diffusers keys, so the UNet export
writes `lora_unet_` keys with the same kohya suffixes and alphas.

Loading goes through diffusers' `load_lora_adapter` (peft injection); saving the diffusers format
through `StableDiffusion3Pipeline/FluxPipeline.save_lora_weights` and peft's
`get_peft_model_state_dict`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from swd.errors import SwdError
from swd.hub import resolve

LORA_FORMATS = ("peft", "diffusers", "comfyui")

PEFT_PREFIX = "base_model.model."
DIFFUSERS_PREFIX = "transformer."
COMFY_PREFIX = "lora_transformer_"
# UNet families write these instead (diffusers' SDXL LoRA layout; ComfyUI's kohya UNet names).
UNET_DIFFUSERS_PREFIX = "unet."
UNET_COMFY_PREFIX = "lora_unet_"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY

# Joint-attention blocks of SD3 and FLUX: image-stream q/k/v/out, the added-context (text)
# projections, and both linears of each stream's feed-forward (SWD_SPEC section 4.6). Suffixes
# also match SD3.5-M's second attention (attn2) and the single-stream FLUX blocks' attn.to_q/k/v.
_JOINT_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0",
    "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff.net.0.proj", "ff.net.2",
    "ff_context.net.0.proj", "ff_context.net.2",
]
# UNet attention (self attn1, cross attn2) q/k/v/out and the transformer blocks' feed-forward.
_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
# FLUX single-stream blocks: proj_mlp is the feed-forward input; proj_out is the shared output of
# attention and feed-forward. "proj_out" also names FLUX's final layer, which lora_config excludes.
_FLUX_SINGLE_TARGETS = ["proj_mlp", "proj_out"]
# Wan2.1 blocks: self (attn1) and cross (attn2) attention q/k/v/out and the feed-forward's two linears.
_WAN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
_FLUX_EXCLUDE = "proj_out"  # regex, full match: only the top-level output projection


def lora_target_modules(family: str) -> list[str]:
    """Module-name suffixes the student LoRA adapts, for peft's `LoraConfig(target_modules=...)`.

    For "flux" the list contains "proj_out", which also matches the final output layer; use
    `lora_config` (which sets exclude_modules) or exclude it yourself.
    """
    if family == "sd3":
        return list(_JOINT_TARGETS)
    if family == "flux":
        return list(_JOINT_TARGETS) + list(_FLUX_SINGLE_TARGETS)
    if family == "unet":
        return list(_UNET_TARGETS)
    if family == "wan":
        return list(_WAN_TARGETS)
    raise SwdError(f"family: unknown {family!r}; choose sd3, flux, unet or wan")


def lora_config(family: str, rank: int = 64, alpha: Optional[float] = None, init: Union[str, bool] = "gaussian"):
    """The student's peft LoraConfig (SWD_SPEC: rank 64, alpha 64, gaussian init)."""
    from peft import LoraConfig

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SwdError(f"rank: expected a positive int, got {rank!r}")
    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        init_lora_weights=init,
        target_modules=lora_target_modules(family),
        exclude_modules=_FLUX_EXCLUDE if family == "flux" else None,
    )


def model_family(transformer) -> str:
    name = type(_unwrap(transformer)).__name__
    if name == "SD3Transformer2DModel":
        return "sd3"
    if name == "FluxTransformer2DModel":
        return "flux"
    if name == "UNet2DConditionModel":
        return "unet"
    if name == "WanTransformer3DModel":
        return "wan"
    raise SwdError(f"model: no LoRA support for {name}; supported: SD3Transformer2DModel, FluxTransformer2DModel, "
                   f"UNet2DConditionModel, WanTransformer3DModel")


def _unwrap(model):
    """The diffusers model inside a peft PeftModel wrapper, else the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@dataclass
class LoraFile:
    """A LoRA as read from disk: tensors under the file's own keys, its format and its config.

    config: LoraConfig keyword arguments (peft's adapter_config.json, or diffusers' metadata
    header without the "transformer." prefix), or None where the file carries none.
    """

    state_dict: dict[str, torch.Tensor]
    format: str
    config: Optional[dict] = None


_FORMAT_PREFIXES = (
    ("peft", PEFT_PREFIX), ("diffusers", DIFFUSERS_PREFIX), ("diffusers", UNET_DIFFUSERS_PREFIX),
    ("comfyui", COMFY_PREFIX), ("comfyui", UNET_COMFY_PREFIX),
)


def _prefix_of(state_dict: dict) -> Optional[str]:
    """The prefix every key shares, of those the formats use (None for bare peft keys)."""
    for _, prefix in _FORMAT_PREFIXES:
        if all(k.startswith(prefix) for k in state_dict):
            return prefix
    return None


def detect_lora_format(state_dict: dict) -> str:
    """'peft', 'diffusers' or 'comfyui' from the keys; bare peft keys (`<module>.lora_A.weight`) count as peft."""
    if not state_dict:
        raise SwdError("lora: the state dict is empty")
    keys = list(state_dict)
    for fmt, prefix in _FORMAT_PREFIXES:
        if all(k.startswith(prefix) for k in keys):
            return fmt
    if all(re.search(r"\.lora_[AB]\.weight$", k) for k in keys):
        return "peft"
    raise SwdError(
        f"lora: unrecognised key layout (first key {keys[0]!r}); expected PEFT ('{PEFT_PREFIX}...lora_A.weight'), "
        f"diffusers ('{DIFFUSERS_PREFIX}...lora_A.weight') or ComfyUI ('{COMFY_PREFIX}...lora_down.weight') keys"
    )


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return load_file(str(path)), header
    except Exception as err:  # safetensors raises several error types for a bad file
        raise SwdError(f"lora: cannot read {path} as safetensors ({type(err).__name__}: {err})") from None


def _strip_prefix(config: Optional[dict], prefix: str) -> Optional[dict]:
    if not config:
        return None
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)} or None


def read_lora(source) -> LoraFile:
    """Read a LoRA from a PEFT adapter folder, a diffusers LoRA folder, a .safetensors file or a state dict.

    A string that is not an existing path may be a Hub id (`owner/name` or `owner/name/file`),
    read through huggingface_hub's cache (swd.hub.resolve; HF_HUB_OFFLINE honoured).
    """
    if isinstance(source, dict):
        sd = dict(source)
        return LoraFile(sd, detect_lora_format(sd))
    path = resolve(source, what="lora")
    config = None
    if path.is_dir():
        if (path / PEFT_CONFIG_NAME).is_file():
            weights = path / PEFT_WEIGHTS_NAME
            if not weights.is_file():
                raise SwdError(f"lora: {path} has {PEFT_CONFIG_NAME} but no {PEFT_WEIGHTS_NAME}")
            config = json.loads((path / PEFT_CONFIG_NAME).read_text())
        elif (path / DIFFUSERS_WEIGHTS_NAME).is_file():
            weights = path / DIFFUSERS_WEIGHTS_NAME
        else:
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise SwdError(
                    f"lora: {path} holds {len(files)} .safetensors files and no {PEFT_CONFIG_NAME}; pass the file itself"
                )
            weights = files[0]
    else:
        weights = path
    if weights.suffix != ".safetensors":
        raise SwdError(f"lora: {weights} is not a .safetensors file (pickled weights are not read)")
    sd, header = _read_safetensors(weights)
    fmt = detect_lora_format(sd)
    if fmt == "diffusers" and DIFFUSERS_METADATA_KEY in header:
        config = _strip_prefix(json.loads(header[DIFFUSERS_METADATA_KEY]), _prefix_of(sd))
    return LoraFile(sd, fmt, config)


def _linear_names(model: nn.Module) -> dict[str, str]:
    """Underscored -> dotted path of every linear layer a LoRA can target (LoRA-wrapped ones included)."""
    from peft.tuners.lora import LoraLayer

    names = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) or (isinstance(module, nn.Linear) and not _inside_lora(name)):
            names[name.replace(".", "_")] = name
    return names


def _inside_lora(name: str) -> bool:
    return ".base_layer" in name or ".lora_A." in name or ".lora_B." in name


def _to_peft(lora: LoraFile, model: nn.Module) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """Bare peft keys `<module>.lora_A.weight` and LoraConfig kwargs (None: diffusers infers alpha = r)."""
    sd, config = lora.state_dict, lora.config
    if lora.format == "peft":
        sd = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in sd.items()}
    elif lora.format == "diffusers":
        prefix = _prefix_of(sd)
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    elif lora.format == "comfyui":
        sd, config = _comfy_to_peft(sd, model, _prefix_of(sd))
    for key in sd:
        if not re.search(r"\.lora_[AB]\.weight$", key):
            raise SwdError(f"lora: unsupported tensor {key!r} (only plain LoRA A/B weights, no DoRA or LoRA bias)")
    return sd, config


def _comfy_to_peft(sd: dict, model: nn.Module, prefix: str = COMFY_PREFIX) -> tuple[dict, dict]:
    names = _linear_names(model)
    out, ranks, alphas = {}, {}, {}
    for key, tensor in sd.items():
        stem, _, suffix = key.partition(".")
        underscored = stem[len(prefix):]
        if underscored not in names:
            raise SwdError(f"lora: {key!r} names no linear layer of this {type(model).__name__}")
        module = names[underscored]
        if suffix == "lora_down.weight":
            out[f"{module}.lora_A.weight"] = tensor
            ranks[module] = tensor.shape[0]
        elif suffix == "lora_up.weight":
            out[f"{module}.lora_B.weight"] = tensor
        elif suffix == "alpha":
            alphas[module] = float(tensor)
        else:
            raise SwdError(f"lora: unsupported ComfyUI tensor {key!r} (expected lora_down, lora_up and alpha)")
    for module, r in ranks.items():
        alphas.setdefault(module, float(r))  # kohya convention: no alpha means alpha = rank (scale 1)
    return out, _config_for(ranks, alphas)


def _config_for(ranks: dict[str, int], alphas: dict[str, float]) -> dict:
    """LoraConfig kwargs for exact modules: the common rank/alpha, patterns for the exceptions."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    exact = lambda name: "^" + re.escape(name)  # noqa: E731  peft matches patterns as (.*\.)?(pattern)$
    return {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(ranks),
        "rank_pattern": {exact(m): v for m, v in ranks.items() if v != r},
        "alpha_pattern": {exact(m): v for m, v in alphas.items() if v != alpha},
    }


def _known_fields(config: Optional[dict]) -> Optional[dict]:
    """LoraConfig kwargs this peft version knows (a config written by another version may have more)."""
    if config is None:
        return None
    from dataclasses import fields

    from peft import LoraConfig

    known = {f.name for f in fields(LoraConfig) if f.init}
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items() if k in known}


def _check_modules(sd: dict, model: nn.Module) -> None:
    names = set(_linear_names(model).values())
    modules = {k.rsplit(".lora_", 1)[0] for k in sd}
    missing = sorted(modules - names)
    if missing:
        raise SwdError(
            f"lora: {len(missing)} module(s) not found as linear layers of this {type(model).__name__}, "
            f"e.g. {missing[0]!r} (a LoRA for another model?)"
        )
    for module in modules:
        if f"{module}.lora_A.weight" not in sd or f"{module}.lora_B.weight" not in sd:
            raise SwdError(f"lora: {module!r} lacks its lora_A or lora_B weight")


def load_lora(transformer, source, adapter_name: str = "default") -> str:
    """Inject a LoRA into a diffusers transformer in place (peft layers); returns the format read.

    source: a PEFT adapter folder (the authors' release: adapter_config.json +
    adapter_model.safetensors), a diffusers LoRA folder or file (as written by
    `save_lora_weights`), a ComfyUI file written by `save_lora_comfyui`, or a state dict.
    Scale: the PEFT config, the diffusers metadata header, or the ComfyUI alphas; a file or
    dict without any of these is read with alpha = r (diffusers' rule).
    """
    model = _unwrap(transformer)
    if adapter_name in (getattr(model, "peft_config", None) or {}):
        raise SwdError(f"adapter_name: {adapter_name!r} is already loaded in this model; pick another name")
    lora = read_lora(source)
    sd, config = _to_peft(lora, model)
    _check_modules(sd, model)
    config = _known_fields(config)
    if config is not None:
        # Target exactly the modules the file holds; the file's suffixes and exclusions are then moot.
        config.update(target_modules=sorted({k.rsplit(".lora_", 1)[0] for k in sd}), exclude_modules=None)
    model.load_lora_adapter(sd, prefix=None, adapter_name=adapter_name, metadata=config)
    return lora.format


def _lora_layers(model: nn.Module, adapter_name: str):
    """(module path, LoraLayer) of every layer holding `adapter_name`."""
    from peft.tuners.lora import LoraLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A]
    if not layers:
        raise SwdError(f"adapter_name: no LoRA layers named {adapter_name!r} in this {type(model).__name__}")
    for name, layer in layers:
        if layer.use_dora.get(adapter_name, False) or getattr(layer, "lora_bias", {}).get(adapter_name, False):
            raise SwdError(f"lora: {name} uses DoRA or a LoRA bias, which the export formats do not carry")
    return layers


def _peft_config(model: nn.Module, adapter_name: str):
    config = (getattr(model, "peft_config", None) or {}).get(adapter_name)
    if config is None:
        raise SwdError(f"adapter_name: {adapter_name!r} has no peft config in this {type(model).__name__}")
    return config


def _config_dict(config) -> dict:
    """A JSON-safe LoraConfig dict (sets as sorted lists, enums as values)."""
    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def _adapter_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Bare peft keys `<module>.lora_A.weight` of one adapter (peft's own extraction)."""
    from peft.utils import get_peft_model_state_dict

    _lora_layers(model, adapter_name)  # the format checks
    sd = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_lora_diffusers(transformer, directory, adapter_name: str = "default", weight_name: Optional[str] = None) -> Path:
    """diffusers' layout via `save_lora_weights`: `transformer.<module>.lora_A.weight` (UNets:
    `unet.<module>...`, StableDiffusionXLPipeline's), config in the header."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    model = _unwrap(transformer)
    family = model_family(model)
    sd = _adapter_state_dict(model, adapter_name)
    metadata = _config_dict(_peft_config(model, adapter_name))
    if family == "unet":
        StableDiffusionXLPipeline.save_lora_weights(
            directory, unet_lora_layers=sd, unet_lora_adapter_metadata=metadata, weight_name=weight_name
        )
    else:
        from diffusers import WanPipeline

        pipeline_cls = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline, "wan": WanPipeline}[family]
        pipeline_cls.save_lora_weights(
            directory, transformer_lora_layers=sd, transformer_lora_adapter_metadata=metadata, weight_name=weight_name
        )
    return Path(directory) / (weight_name or DIFFUSERS_WEIGHTS_NAME)


def save_lora_peft(transformer, directory, adapter_name: str = "default") -> Path:
    """The authors' layout (what `PeftModel.save_pretrained` writes): adapter_config.json + adapter_model.safetensors."""
    model = _unwrap(transformer)
    sd = {PEFT_PREFIX + k: v for k, v in _adapter_state_dict(model, adapter_name).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PEFT_CONFIG_NAME).write_text(json.dumps(_config_dict(_peft_config(model, adapter_name)), indent=2))
    save_file(sd, str(directory / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    return directory / PEFT_WEIGHTS_NAME


def comfyui_state_dict(transformer, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """`lora_transformer_<module>.lora_down.weight` (A), `.lora_up.weight` (B), `.alpha` (= scaling * r);
    UNets `lora_unet_<module>...`."""
    out = {}
    prefix = UNET_COMFY_PREFIX if model_family(transformer) == "unet" else COMFY_PREFIX
    for name, layer in _lora_layers(_unwrap(transformer), adapter_name):
        stem = prefix + name.replace(".", "_")
        r = layer.r[adapter_name]
        out[f"{stem}.lora_down.weight"] = layer.lora_A[adapter_name].weight.detach().contiguous()
        out[f"{stem}.lora_up.weight"] = layer.lora_B[adapter_name].weight.detach().contiguous()
        # ComfyUI scales by alpha / rank; peft's scaling may be alpha / r or alpha / sqrt(r) (rsLoRA).
        out[f"{stem}.alpha"] = torch.tensor(float(layer.scaling[adapter_name]) * r, dtype=torch.float32)
    return out


def save_lora_comfyui(transformer, path, adapter_name: str = "default") -> Path:
    """One .safetensors file for ComfyUI's LoraLoader (layout and reasons in the module docstring)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SwdError(f"path: a ComfyUI LoRA is one .safetensors file, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    family = model_family(transformer)
    save_file(comfyui_state_dict(transformer, adapter_name), str(path),
              metadata={"format": "pt", "swd_family": family, "swd_lora_format": "comfyui"})
    return path


_WRITERS = {"peft": save_lora_peft, "diffusers": save_lora_diffusers, "comfyui": save_lora_comfyui}


def save_lora(transformer, path, format: str = "diffusers", adapter_name: str = "default") -> Path:
    """Write the adapter in one of LORA_FORMATS; returns the weights file written."""
    if format not in _WRITERS:
        raise SwdError(f"format: unknown {format!r}; choose one of {', '.join(LORA_FORMATS)}")
    return _WRITERS[format](transformer, path, adapter_name=adapter_name)


__all__ = [
    "LORA_FORMATS",
    "LoraFile",
    "comfyui_state_dict",
    "detect_lora_format",
    "load_lora",
    "lora_config",
    "lora_target_modules",
    "model_family",
    "read_lora",
    "save_lora",
    "save_lora_comfyui",
    "save_lora_diffusers",
    "save_lora_peft",
]
