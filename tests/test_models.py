import pytest
import torch
from diffusers import FluxPipeline

from swd.errors import SwdError
from swd.models import TextCondition, adapter_for
from swd.models.flux import image_position_ids, pack_latents, unpack_latents

from tests.conftest import make_cond


def test_pack_and_ids_match_diffusers_flux_pipeline():
    x = torch.randn(2, 4, 6, 10)
    torch.testing.assert_close(pack_latents(x), FluxPipeline._pack_latents(x, 2, 4, 6, 10))
    torch.testing.assert_close(unpack_latents(pack_latents(x), 6, 10), x)
    # diffusers' unpack takes pixel sizes and a VAE factor; factor 1 gives latent sizes.
    torch.testing.assert_close(FluxPipeline._unpack_latents(pack_latents(x), 6, 10, 1), x)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    torch.testing.assert_close(image_position_ids(6, 10), ids)


@torch.no_grad()
@pytest.mark.parametrize("size", [(8, 8), (12, 16), (24, 24)])
def test_flux_adapter_matches_a_hand_call(flux_adapter, cond2, size):
    x = torch.randn(2, 4, *size)
    sigma = torch.tensor([0.9, 0.4])
    ours = flux_adapter(x, sigma, cond2)
    h, w = size
    out = flux_adapter.transformer(
        hidden_states=FluxPipeline._pack_latents(x, 2, 4, h, w), encoder_hidden_states=cond2.prompt_embeds,
        pooled_projections=cond2.pooled, timestep=sigma, guidance=torch.full((2,), 3.5),
        img_ids=FluxPipeline._prepare_latent_image_ids(2, h // 2, w // 2, "cpu", torch.float32),
        txt_ids=torch.zeros(6, 3), return_dict=False)[0]
    torch.testing.assert_close(ours, FluxPipeline._unpack_latents(out, h, w, 1))


@torch.no_grad()
@pytest.mark.parametrize("size", [(8, 8), (12, 20), (32, 32)])
def test_sd3_adapter_sizes_and_timestep(sd3_adapter, cond2, size):
    x = torch.randn(2, 4, *size)
    v = sd3_adapter(x, 0.25, cond2)
    ref = sd3_adapter.transformer(hidden_states=x, encoder_hidden_states=cond2.prompt_embeds,
                                  pooled_projections=cond2.pooled, timestep=torch.tensor([250.0, 250.0]),
                                  return_dict=False)[0]
    torch.testing.assert_close(v, ref)


@pytest.mark.parametrize("which", ["sd3_adapter", "flux_adapter"])
def test_features_come_from_the_block_and_stop_early(which, request, cond2):
    adapter = request.getfixturevalue(which)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        v_full, feats_full = adapter.velocity_and_features(x, 0.5, cond2, block=0)
        feats = adapter.features(x, 0.5, cond2, block=0)
        assert feats.shape == (2, 16, 16)  # (B, image tokens (8/2)^2, width)
        torch.testing.assert_close(feats, feats_full)
        torch.testing.assert_close(v_full, adapter(x, 0.5, cond2))
        # Perturb everything after block 0: features stay, velocity moves.
        later = adapter.block(1) if which == "flux_adapter" else adapter.transformer.transformer_blocks[1]
        for p in later.parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(adapter.features(x, 0.5, cond2, block=0), feats)
        assert not torch.allclose(adapter(x, 0.5, cond2), v_full)


def test_features_backprop_with_gradient_checkpointing(sd3_adapter, cond2):
    sd3_adapter.transformer.enable_gradient_checkpointing()
    sd3_adapter.train()
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    feats = sd3_adapter.features(x, 0.5, cond2, block=1)
    feats.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # The armed-once hook did not fire during recomputation: a new call still captures.
    assert sd3_adapter.features(x, 0.5, cond2, block=0).shape == (2, 16, 16)


def test_bad_inputs_give_one_line_errors(sd3_adapter, flux_adapter, cond2):
    with pytest.raises(SwdError, match="not divisible by the patch size 2"):
        sd3_adapter(torch.randn(2, 4, 9, 8), 0.5, cond2)
    with pytest.raises(SwdError, match="largest latent side 32"):
        sd3_adapter(torch.randn(2, 4, 34, 34), 0.5, cond2)
    with pytest.raises(SwdError, match="expected \\(B, 4, H, W\\)"):
        flux_adapter(torch.randn(2, 3, 8, 8), 0.5, cond2)
    with pytest.raises(SwdError, match=f"not divisible by the packing size {flux_adapter.patch_size}$"):
        flux_adapter(torch.randn(2, 4, 9, 8), 0.5, cond2)
    flux_adapter(torch.randn(1, 4, 64, 64), 0.5, make_cond(1))  # RoPE: no largest side
    with pytest.raises(SwdError, match="out of range"):
        sd3_adapter.features(torch.randn(2, 4, 8, 8), 0.5, cond2, block=5)
    with pytest.raises(SwdError, match="does not match"):
        sd3_adapter(torch.randn(3, 4, 8, 8), 0.5, cond2)
    with pytest.raises(SwdError, match="no adapter"):
        adapter_for(torch.nn.Linear(2, 2))


def test_condition_broadcast_and_repeat():
    c = make_cond(1)
    assert c.expand_to(3).batch_size == 3
    r = make_cond(2).repeat(2)
    torch.testing.assert_close(r.prompt_embeds[0], r.prompt_embeds[1])
    with pytest.raises(SwdError):
        TextCondition(torch.randn(2, 3), torch.randn(2, 4))


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_build_in_a_dtype_creates_the_weights_in_it_and_restores_the_default(name):
    from swd.models.configs import ARCHS

    model = ARCHS[name].build(dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    torch.manual_seed(0)
    a = ARCHS[name].build()
    torch.manual_seed(0)
    b = ARCHS[name].build(dtype=torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_build_restores_the_default_dtype_when_the_model_fails(monkeypatch):
    import swd.models.configs as configs

    def broken(family):
        def make(**kwargs):
            assert torch.get_default_dtype() == torch.bfloat16  # the build saw the asked dtype
            raise ValueError("bad config")
        return make

    monkeypatch.setattr(configs, "transformer_class", broken)
    with pytest.raises(ValueError, match="bad config"):
        configs.ARCHS["tiny-sd3"].build(dtype=torch.bfloat16)
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("arch, prefix", [("tiny-sd3", "transformer"), ("tiny-flux", "transformer"),
                                          ("tiny-wan", "transformer"), ("unet", "unet")])
def test_adapter_base_registers_the_model_under_its_family_name(arch, prefix):
    """The base registers the wrapped model: `network` is it, the attribute the family names it by
    is it, and the adapter's state-dict keys are the model's under that prefix (LoRA and checkpoint
    files written before the base keep loading)."""
    from swd.models.configs import ARCHS
    from tests.models.test_unet import tiny_unet

    model = tiny_unet() if arch == "unet" else ARCHS[arch].build()
    adapter = adapter_for(model)
    assert adapter.network is model and getattr(adapter, prefix) is model
    assert list(adapter.state_dict()) == [f"{prefix}.{k}" for k in model.state_dict()]
    assert adapter.config is model.config and adapter.dtype == torch.float32
