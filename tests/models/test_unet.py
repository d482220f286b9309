import pytest
import torch

from swd.errors import SwdError
from swd.models import TextCondition, UNetAdapter, adapter_for
from swd.models.testbed import UNetConfig, build_testbed_model, resolve_model_config
from swd.sampling import conditioned, make_generator, sample_scalewise
from swd.schedules import ScaleSchedule

TEXT_DIM = 24


def tiny_unet(pooled=False):
    torch.manual_seed(0)
    cfg = UNetConfig(sample_size=16, block_out_channels=[8, 16], cross_attention=[False, True],
                     head_dim=8, norm_num_groups=4, text_dim=TEXT_DIM, pooled=pooled)
    return build_testbed_model(cfg).eval()


def cond(batch=2, tokens=3):
    g = torch.Generator().manual_seed(1)
    return TextCondition(torch.randn(batch, tokens, TEXT_DIM, generator=g), torch.randn(batch, TEXT_DIM, generator=g))


def test_adapter_for_picks_the_unet_adapter_and_reads_its_geometry():
    adapter = adapter_for(tiny_unet(), guidance=4.5)  # other families' kwargs are ignored
    assert isinstance(adapter, UNetAdapter)
    assert adapter.latent_channels == 3 and adapter.patch_size == 2 and adapter.max_latent_size is None
    assert adapter.num_blocks == 5  # 2 down + mid + 2 up
    assert adapter.block(2) is adapter.unet.mid_block and adapter.block(-1) is adapter.unet.up_blocks[-1]
    assert adapter.dtype == torch.float32


@pytest.mark.parametrize("pooled", [False, True])
def test_velocity_is_the_unet_called_with_timestep_1000_sigma(pooled):
    unet = tiny_unet(pooled)
    adapter = UNetAdapter(unet)
    x, sigma, c = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.9]), cond()
    with torch.no_grad():
        v = adapter(x, sigma, c)
        ref = unet(x, sigma * 1000, encoder_hidden_states=c.prompt_embeds,
                   class_labels=c.pooled if pooled else None).sample
    torch.testing.assert_close(v, ref, rtol=0, atol=0)
    if pooled:  # the pooled vector reaches the network
        with torch.no_grad():
            other = adapter(x, sigma, TextCondition(c.prompt_embeds, torch.zeros_like(c.pooled)))
        assert not torch.allclose(v, other)


def test_features_are_block_tokens_and_stopping_early_changes_nothing():
    adapter = UNetAdapter(tiny_unet())
    x, c = torch.randn(2, 3, 16, 16), cond()
    with torch.no_grad():
        for block, (tokens, channels) in enumerate([(64, 8), (64, 16), (64, 16), (256, 16), (256, 8)]):
            early = adapter.features(x, 0.5, c, block)
            v, full = adapter.velocity_and_features(x, 0.5, c, block)
            assert early.shape == (2, tokens, channels)  # down and up blocks: after their resampler
            torch.testing.assert_close(early, full, rtol=0, atol=0)
            torch.testing.assert_close(v, adapter(x, 0.5, c), rtol=0, atol=0)


def test_sizes_must_divide_the_downsampling_factor():
    adapter = UNetAdapter(tiny_unet())
    with pytest.raises(SwdError, match="downsampling factor 2"):
        adapter(torch.randn(1, 3, 15, 16), 0.5, cond(1))
    with pytest.raises(SwdError, match="expected"):
        adapter(torch.randn(1, 4, 16, 16), 0.5, cond(1))


def test_only_flow_prediction_for_now():
    with pytest.raises(SwdError, match="prediction"):
        UNetAdapter(tiny_unet(), prediction="epsilon")


def test_scalewise_sampler_runs_across_sizes():
    adapter = UNetAdapter(tiny_unet())
    schedule = ScaleSchedule(scales=[8, 16], sigmas=[1.0, 0.6])
    with torch.no_grad():
        x = sample_scalewise(conditioned(adapter, cond(2)), schedule, 2, 3, generator=make_generator(0))
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


def test_model_config_by_arch():
    assert type(resolve_model_config({"arch": "unet", "sample_size": 16})) is UNetConfig
    assert type(resolve_model_config({"sample_size": 16, "width": 32})).__name__ == "MMDiTConfig"
    with pytest.raises(SwdError, match="model.arch: unknown 'vit'"):
        resolve_model_config({"arch": "vit"})
    with pytest.raises(SwdError, match="model.width: unknown key"):
        resolve_model_config({"arch": "unet", "width": 32})
    with pytest.raises(SwdError, match="model.cross_attention"):
        build_testbed_model(UNetConfig(cross_attention=[True]))
    with pytest.raises(SwdError, match="model.sample_size"):
        build_testbed_model(UNetConfig(sample_size=30))
