"""Student LoRAs: targets, and round trips through the PEFT, diffusers and ComfyUI layouts."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from swd.errors import SwdError
from swd.lora import (
    comfyui_state_dict,
    detect_lora_format,
    load_lora,
    lora_config,
    lora_target_modules,
    read_lora,
    save_lora,
)
from swd.models import adapter_for
from swd.models.configs import ARCHS

from tests.conftest import make_cond

RANK, ALPHA = 4, 8  # alpha != rank, so a wrong scale shows


def build(family, seed=0):
    torch.manual_seed(seed)
    return ARCHS[f"tiny-{family}"].build().eval()


def randomize_lora(model, adapter_name="default", seed=5):
    """peft's gaussian init leaves B = 0 (no effect); give A and B random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(model.named_modules(), key=lambda item: item[0]):
            if isinstance(layer, LoraLayer) and adapter_name in layer.lora_A:
                for lin in (layer.lora_A[adapter_name], layer.lora_B[adapter_name]):
                    lin.weight.copy_(0.2 * torch.randn(lin.weight.shape, generator=g))
    return model


def student(family, config=None):
    model = build(family)
    model.add_adapter(config or lora_config(family, rank=RANK, alpha=ALPHA))
    return randomize_lora(model)


@torch.no_grad()
def velocity(model):
    x = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(3))
    return adapter_for(model)(x, torch.tensor([0.9, 0.4]), make_cond(2))


def lora_modules(model, adapter_name="default"):
    return {n for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A}


def lora_tensors(model, adapter_name="default"):
    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and adapter_name in layer.lora_A:
            out[name] = (layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight, layer.scaling[adapter_name])
    return out


def test_targets_are_the_spec_layers():
    sd3 = student("sd3")
    expected = set()
    for i, block in enumerate(sd3.transformer_blocks):
        names = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                 "attn.add_v_proj", "ff.net.0.proj", "ff.net.2"]
        if not block.context_pre_only:  # the last block has no text output path
            names += ["attn.to_add_out", "ff_context.net.0.proj", "ff_context.net.2"]
        expected |= {f"transformer_blocks.{i}.{n}" for n in names}
    assert lora_modules(sd3) == expected

    flux = student("flux")
    double = {f"transformer_blocks.0.{n}" for n in [
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
        "ff_context.net.2"]}
    single = {f"single_transformer_blocks.0.{n}" for n in ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"]}
    assert lora_modules(flux) == double | single  # not the final proj_out, norms or embedders
    assert "proj_out" in lora_target_modules("flux") and "proj_mlp" not in lora_target_modules("sd3")
    with pytest.raises(SwdError, match="family"):
        lora_target_modules("sdxl")


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("fmt", ["peft", "diffusers", "comfyui"])
def test_round_trip(tmp_path, family, fmt):
    source = student(family)
    target = tmp_path / ("lora.safetensors" if fmt == "comfyui" else "lora")
    written = save_lora(source, target, format=fmt)
    assert written.is_file()

    fresh = build(family)
    base = velocity(fresh)
    assert load_lora(fresh, target) == fmt
    assert lora_modules(fresh) == lora_modules(source)
    ours, theirs = lora_tensors(fresh), lora_tensors(source)
    for name, (a, b, scale) in theirs.items():
        torch.testing.assert_close(ours[name][0], a, rtol=0, atol=0)
        torch.testing.assert_close(ours[name][1], b, rtol=0, atol=0)
        assert ours[name][2] == pytest.approx(scale) == ALPHA / RANK
    out = velocity(fresh)
    torch.testing.assert_close(out, velocity(source), rtol=0, atol=1e-6)
    assert (out - base).abs().max() > 1e-3  # the LoRA does change the model


def test_file_keys_of_each_layout(tmp_path):
    source = student("sd3")
    save_lora(source, tmp_path / "peft", format="peft")
    save_lora(source, tmp_path / "diffusers", format="diffusers")
    save_lora(source, tmp_path / "comfy.safetensors", format="comfyui")
    peft = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    diffusers = load_file(tmp_path / "diffusers" / "pytorch_lora_weights.safetensors")
    comfy = load_file(tmp_path / "comfy.safetensors")
    assert "base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight" in peft
    assert "transformer.transformer_blocks.0.attn.to_q.lora_B.weight" in diffusers
    stem = "lora_transformer_transformer_blocks_0_attn_to_q"
    assert comfy[f"{stem}.lora_down.weight"].shape == (RANK, 16)  # A: (r, in)
    assert comfy[f"{stem}.lora_up.weight"].shape == (16, RANK)  # B: (out, r)
    assert comfy[f"{stem}.alpha"].item() == ALPHA
    assert len(peft) == len(diffusers) == 2 * len(lora_modules(source)) and len(comfy) == 3 * len(lora_modules(source))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (RANK, ALPHA)
    assert [detect_lora_format(sd) for sd in (peft, diffusers, comfy)] == ["peft", "diffusers", "comfyui"]


def test_comfyui_loader_lookup_finds_every_tensor():
    """Replays ComfyUI's lookup: for SD3/FLUX it maps 'lora_transformer_' + path.replace('.', '_') of each
    diffusers weight, then reads '<key>.lora_up.weight', '.lora_down.weight' and '.alpha'."""
    for family in ("sd3", "flux"):
        model = student(family)
        sd = comfyui_state_dict(model)
        key_map = {
            "lora_transformer_" + name[: -len(".weight")].replace(".", "_"): name
            for name in build(family).state_dict() if name.endswith(".weight")
        }
        used = set()
        for key in key_map:
            if f"{key}.lora_up.weight" in sd:
                used |= {f"{key}.lora_up.weight", f"{key}.lora_down.weight", f"{key}.alpha"}
        assert used == set(sd)


def test_merged_weight_is_w_plus_alpha_over_r_b_a(tmp_path):
    source = student("flux")
    save_lora(source, tmp_path / "lora.safetensors", format="comfyui")
    fresh = build("flux")
    w = fresh.single_transformer_blocks[0].proj_out.weight.detach().clone()
    load_lora(fresh, tmp_path / "lora.safetensors")
    before = velocity(fresh)
    fresh.fuse_lora()  # diffusers' merge of the peft layers into the base weights
    merged = fresh.single_transformer_blocks[0].proj_out.base_layer.weight

    sd = load_file(tmp_path / "lora.safetensors")
    stem = "lora_transformer_single_transformer_blocks_0_proj_out"
    a, b, alpha = sd[f"{stem}.lora_down.weight"], sd[f"{stem}.lora_up.weight"], sd[f"{stem}.alpha"].item()
    torch.testing.assert_close(merged, w + alpha / a.shape[0] * b @ a)
    torch.testing.assert_close(velocity(fresh), before, rtol=0, atol=1e-5)


def test_loads_the_authors_peft_release(tmp_path):
    """The release is a `PeftModel.save_pretrained` folder; build one with peft itself."""
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"])
    wrapped = get_peft_model(build("sd3"), config)
    randomize_lora(wrapped.base_model.model)
    wrapped.save_pretrained(tmp_path / "release")
    keys = load_file(tmp_path / "release" / "adapter_model.safetensors")
    assert "base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight" in keys

    fresh = build("sd3")
    assert load_lora(fresh, tmp_path / "release") == "peft"
    torch.testing.assert_close(velocity(fresh), velocity(wrapped.base_model.model), rtol=0, atol=1e-6)
    # A PeftModel wrapper exports like the bare model (its keys would otherwise carry the prefix twice).
    save_lora(wrapped, tmp_path / "out", format="diffusers")
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in load_file(
        tmp_path / "out" / "pytorch_lora_weights.safetensors")


def test_diffusers_export_loads_with_diffusers_own_loader(tmp_path):
    source = student("sd3")
    save_lora(source, tmp_path / "lora", format="diffusers")
    fresh = build("sd3")
    fresh.load_lora_adapter(str(tmp_path / "lora"), prefix="transformer", weight_name="pytorch_lora_weights.safetensors")
    torch.testing.assert_close(velocity(fresh), velocity(source), rtol=0, atol=1e-6)


def test_rank_patterns_and_rslora_survive_the_comfyui_layout(tmp_path):
    config = LoraConfig(r=4, lora_alpha=6, use_rslora=True, rank_pattern={"ff.net.2": 2},
                        target_modules=["to_q", "to_v", "ff.net.2"])
    source = student("sd3", config)
    save_lora(source, tmp_path / "lora.safetensors", format="comfyui")
    fresh = build("sd3")
    load_lora(fresh, tmp_path / "lora.safetensors")
    assert fresh.transformer_blocks[0].ff.net[2].r["default"] == 2
    torch.testing.assert_close(velocity(fresh), velocity(source), rtol=0, atol=1e-6)


def test_a_state_dict_and_a_second_adapter(tmp_path):
    source = student("sd3")
    fresh = build("sd3")
    sd = comfyui_state_dict(source)
    assert load_lora(fresh, sd, adapter_name="swd") == "comfyui"
    torch.testing.assert_close(velocity(fresh), velocity(source), rtol=0, atol=1e-6)
    with pytest.raises(SwdError, match="already loaded"):
        load_lora(fresh, sd, adapter_name="swd")


def test_errors_name_the_problem(tmp_path):
    sd3 = student("sd3")
    with pytest.raises(SwdError, match="unrecognised key layout"):
        read_lora({"foo.weight": torch.zeros(1)})
    with pytest.raises(SwdError, match="does not exist"):
        read_lora(tmp_path / "missing")
    flux_lora = comfyui_state_dict(student("flux"))
    with pytest.raises(SwdError, match="names no linear layer"):
        load_lora(build("sd3"), flux_lora)
    with pytest.raises(SwdError, match="not found as linear layers"):
        load_lora(build("sd3"), {"transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight": torch.zeros(4, 16),
                                 "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight": torch.zeros(64, 4)})
    with pytest.raises(SwdError, match="format"):
        save_lora(sd3, tmp_path / "x", format="kohya")
    with pytest.raises(SwdError, match="one .safetensors file"):
        save_lora(sd3, tmp_path / "x", format="comfyui")
    with pytest.raises(SwdError, match="no LoRA layers"):
        save_lora(build("sd3"), tmp_path / "y", format="peft")
