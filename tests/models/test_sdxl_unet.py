"""Noise-prediction UNets (SDXL): the DDPM process, the SDXL adapter and the sampler, each checked
against diffusers' own schedulers (LCMScheduler for the constant-scale loop, DDPMScheduler's
add_noise and pred_original_sample) or a hand loop for the scale changes."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, LCMScheduler
from diffusers.utils.torch_utils import randn_tensor

from swd.errors import SwdError
from swd.models import TextCondition, UNetAdapter, adapter_for, text_widths
from swd.processes import FLOW, DDPMProcess, process_from_scheduler_config, sdxl_process
from swd.sampling import conditioned, sample_scalewise
from swd.schedules import ScaleSchedule

from tests.pipelines import SDXL_POOLED, SDXL_TEXT, sdxl_unet

SDXL_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear"}
AUTHORS_SIGMAS = (1.0, 0.8, 0.6, 0.4)  # the authors' SDXL student: timesteps = 1000 * sigmas


def cond(batch=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    return TextCondition(torch.randn(batch, 5, SDXL_TEXT, generator=g), torch.randn(batch, SDXL_POOLED, generator=g))


def test_sdxl_alphas_are_the_scaled_linear_closed_form():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sdxl_process().alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-6, atol=0)
    assert sdxl_process().timestep(torch.tensor(AUTHORS_SIGMAS)).tolist() == [999, 800, 600, 400]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_forward_process_and_x0_equal_diffusers_ddpm_scheduler(prediction):
    scheduler = DDPMScheduler(**SDXL_SCHEDULER, prediction_type=prediction, clip_sample=False)
    process = process_from_scheduler_config(scheduler.config)
    assert isinstance(process, DDPMProcess) and process.prediction == prediction
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn(3, 4, 6, 6, generator=g) for _ in range(3))
    t = torch.tensor([999, 600, 37])
    torch.testing.assert_close(process.add_noise(x0, t / 1000, eps), scheduler.add_noise(x0, eps, t), rtol=0, atol=1e-6)
    for i, ti in enumerate(t.tolist()):
        x = process.add_noise(x0, ti / 1000, eps)[i:i + 1]
        reference = scheduler.step(out[i:i + 1], ti, x).pred_original_sample
        torch.testing.assert_close(process.x0(x, ti / 1000, out[i:i + 1]), reference, rtol=1e-5, atol=1e-5)
    # A flow-matching scheduler's config gives the flow process.
    assert process_from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}) is FLOW


def test_adapter_feeds_sdxl_added_conditions_and_the_ddpm_timestep():
    unet = sdxl_unet()
    adapter = adapter_for(unet, prediction="epsilon", guidance=4.5)
    assert isinstance(adapter, UNetAdapter) and adapter.process.prediction == "epsilon"
    assert text_widths(unet) == (SDXL_TEXT, SDXL_POOLED)
    x, c = torch.randn(2, 4, 8, 12), cond()
    with torch.no_grad():
        out = adapter(x, torch.tensor([1.0, 0.6]), c)
        # time ids: an uncropped image of the current latent size times the VAE factor (8).
        time_ids = torch.tensor([[64.0, 96, 0, 0, 64, 96]] * 2)
        ref = unet(x, torch.tensor([999.0, 600.0]), encoder_hidden_states=c.prompt_embeds,
                   added_cond_kwargs={"text_embeds": c.pooled, "time_ids": time_ids}).sample
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        given = TextCondition(c.prompt_embeds, c.pooled, torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2))
        assert not torch.allclose(adapter(x, torch.tensor([1.0, 0.6]), given), out)  # the time ids reach the UNet
        # blocks give features (the MMD loss's input) as for any UNet
        assert adapter.features(x, 0.5, c, 1).shape == (2, 24, 16)
    with pytest.raises(SwdError, match="prediction"):
        UNetAdapter(unet, prediction="sample")
    with pytest.raises(SwdError, match="process"):
        UNetAdapter(unet, prediction="epsilon", process=sdxl_process("v_prediction"))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@torch.no_grad()
def test_constant_scale_sampling_equals_diffusers_lcm_scheduler(prediction):
    """At one scale the scale-wise sampler is LCM's multistep loop: x0 from the prediction, then
    fresh noise to the next timestep (diffusers' LCMScheduler, stock config but prediction type)."""
    unet, c = sdxl_unet(), cond()
    adapter = UNetAdapter(unet, prediction=prediction)
    schedule = ScaleSchedule(scales=(16,) * 4, sigmas=AUTHORS_SIGMAS)
    ours = sample_scalewise(conditioned(adapter, c), schedule, 2, 4, generator=torch.Generator().manual_seed(3),
                            process=adapter.process)

    scheduler = LCMScheduler(**SDXL_SCHEDULER, prediction_type=prediction)
    scheduler.set_timesteps(timesteps=[999, 800, 600, 400])
    generator = torch.Generator().manual_seed(3)
    x = randn_tensor((2, 4, 16, 16), generator=generator)
    time_ids = torch.tensor([[128.0, 128, 0, 0, 128, 128]] * 2)
    for t in scheduler.timesteps:
        out = unet(x, t, encoder_hidden_states=c.prompt_embeds,
                   added_cond_kwargs={"text_embeds": c.pooled, "time_ids": time_ids}).sample
        x = scheduler.step(out, t, x, generator=generator).prev_sample  # the last step returns x0
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


@torch.no_grad()
def test_scale_changes_by_hand():
    """4 scales (8 -> 16): x0 from eps, bicubic upsampling, fresh noise to the next timestep with
    diffusers' DDPMScheduler.add_noise; time ids follow each scale's size."""
    unet, c = sdxl_unet(), cond()
    adapter = UNetAdapter(unet, prediction="epsilon")
    schedule = ScaleSchedule(scales=(8, 10, 12, 16), sigmas=AUTHORS_SIGMAS)
    seen = []
    ours = sample_scalewise(conditioned(adapter, c), schedule, 2, 4, generator=torch.Generator().manual_seed(4),
                            process=adapter.process, callback=lambda step, x, sigma, x0: seen.append(x.shape[-1]))
    assert seen == [8, 10, 12, 16]

    scheduler = DDPMScheduler(**SDXL_SCHEDULER)
    abar = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = [999, 800, 600, 400]
    for i, t in enumerate(timesteps):
        size = x.shape[-1] * 8
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)
        eps = unet(x, t, encoder_hidden_states=c.prompt_embeds,
                   added_cond_kwargs={"text_embeds": c.pooled, "time_ids": time_ids}).sample
        x0 = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
        if i == len(timesteps) - 1:
            break
        up = F.interpolate(x0, size=schedule.scales[i + 1], mode="bicubic", align_corners=False)
        noise = torch.randn(up.shape, generator=generator)
        x = scheduler.add_noise(up, noise, torch.tensor([timesteps[i + 1]]))
    torch.testing.assert_close(ours, x0, rtol=1e-6, atol=1e-5)
