"""UNet (SDXL) student LoRAs: PEFT, diffusers (`unet.`) and ComfyUI (`lora_unet_`) round trips, and
diffusers' own SDXL loader reading our diffusers export."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from safetensors.torch import load_file

from swd.lora import comfyui_state_dict, detect_lora_format, load_lora, lora_config, lora_target_modules, read_lora, save_lora
from swd.models import TextCondition
from swd.models.unet import UNetAdapter

from tests.pipelines import SDXL_POOLED, SDXL_TEXT, sdxl_components, sdxl_unet
from tests.test_lora import ALPHA, RANK, lora_modules, randomize_lora


def unet_student():
    unet = sdxl_unet()
    unet.add_adapter(lora_config("unet", rank=RANK, alpha=ALPHA))
    return randomize_lora(unet)


@torch.no_grad()
def prediction(unet):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 12, generator=g)
    cond = TextCondition(torch.randn(2, 5, SDXL_TEXT, generator=g), torch.randn(2, SDXL_POOLED, generator=g))
    return UNetAdapter(unet, prediction="epsilon")(x, torch.tensor([0.9, 0.4]), cond)


def test_unet_targets_are_attention_and_feed_forward():
    unet = unet_student()
    names = lora_modules(unet)
    assert lora_target_modules("unet") == ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k" in names
    assert "up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2" in names
    assert all(".attn" in n or ".ff.net" in n for n in names)


@pytest.mark.parametrize("fmt", ["peft", "diffusers", "comfyui"])
def test_round_trip_gives_the_same_prediction(tmp_path, fmt):
    source = unet_student()
    target = tmp_path / ("lora.safetensors" if fmt == "comfyui" else "lora")
    written = save_lora(source, target, format=fmt)
    sd = load_file(str(written))
    prefix = {"peft": "base_model.model.", "diffusers": "unet.", "comfyui": "lora_unet_"}[fmt]
    assert all(k.startswith(prefix) for k in sd) and detect_lora_format(sd) == fmt
    fresh = sdxl_unet()
    assert load_lora(fresh, target) == fmt
    assert lora_modules(fresh) == lora_modules(source)
    torch.testing.assert_close(prediction(fresh), prediction(source), rtol=0, atol=1e-6)
    assert (prediction(fresh) - prediction(sdxl_unet())).abs().max() > 1e-3  # the LoRA does something


def test_comfyui_keys_are_kohya_unet_names_with_alpha():
    sd = comfyui_state_dict(unet_student())
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert sd[f"{stem}.lora_down.weight"].shape[0] == RANK and sd[f"{stem}.lora_up.weight"].shape[1] == RANK
    assert float(sd[f"{stem}.alpha"]) == ALPHA
    assert read_lora(sd).format == "comfyui"


@torch.no_grad()
def test_diffusers_sdxl_loader_reads_our_export(tmp_path):
    source = unet_student()
    save_lora(source, tmp_path / "diffusers", format="diffusers")
    pipe = StableDiffusionXLPipeline(scheduler=EulerDiscreteScheduler(), add_watermarker=False, **sdxl_components(with_text=False),
                                     text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.load_lora_weights(tmp_path / "diffusers")  # StableDiffusionXLLoraLoaderMixin, alpha from the header
    torch.testing.assert_close(prediction(pipe.unet), prediction(source), rtol=0, atol=1e-6)
