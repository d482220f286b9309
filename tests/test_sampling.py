import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler
from diffusers.utils.torch_utils import randn_tensor

from swd.errors import SwdError
from swd.models.base import TextCondition
from swd.sampling import (
    conditioned,
    guided,
    make_generator,
    sample_euler,
    sample_fewstep,
    sample_scalewise,
    sample_teacher,
    upsample,
)
from swd.schedules import ScaleSchedule, flow_sigmas

from tests.conftest import make_cond

SCHEDULE = ScaleSchedule(scales=[8, 12, 16, 24], sigmas=[1.0, 0.8959, 0.7371, 0.6022], name="t")


@torch.no_grad()
def test_scalewise_matches_diffusers_lcm_scheduler(sd3_adapter, cond2):
    """Independent implementation: diffusers' FlowMatchLCMScheduler with scale factors."""
    channels = sd3_adapter.latent_channels
    ours = sample_scalewise(conditioned(sd3_adapter, cond2), SCHEDULE, 2, channels, generator=make_generator(7))

    scheduler = FlowMatchLCMScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=list(SCHEDULE.sigmas))
    h0 = SCHEDULE.scales[0][0]
    scheduler.set_scale_factors([s[0] / h0 for s in SCHEDULE.scales[1:]], upscale_mode="bicubic")
    gen = torch.Generator("cpu").manual_seed(7)
    x = randn_tensor((2, channels, h0, h0), generator=gen)
    for t in scheduler.timesteps:
        v = sd3_adapter.transformer(hidden_states=x, encoder_hidden_states=cond2.prompt_embeds,
                                    pooled_projections=cond2.pooled, timestep=t.expand(2),
                                    return_dict=False)[0]
        x = scheduler.step(v, t, x, generator=gen).prev_sample
    assert ours.shape == x.shape == (2, channels, 24, 24)
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_teacher_euler_cfg_matches_diffusers_scheduler(sd3_adapter, cond2):
    uncond = make_cond(1, seed=3)
    scale = 4.5
    ours = sample_teacher(guided(sd3_adapter, cond2, uncond, scale), (16, 16), 2, 4, steps=28,
                          generator=make_generator(3))

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(28)
    x = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(3))
    both = TextCondition.cat([uncond.expand_to(2), cond2])
    for t in scheduler.timesteps:
        out = sd3_adapter.transformer(hidden_states=torch.cat([x, x]), encoder_hidden_states=both.prompt_embeds,
                                      pooled_projections=both.pooled, timestep=t.expand(4), return_dict=False)[0]
        v_u, v_c = out.chunk(2)
        x = scheduler.step(v_u + scale * (v_c - v_u), t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def _oracle(target_at):
    """A denoiser that knows the answer: v = (x - x0*) / sigma, so x0_hat = x0* exactly."""
    seen = []

    def denoiser(x, sigma):
        seen.append((tuple(x.shape[-2:]), sigma.clone()))
        x0 = target_at(x.shape[-2:])
        return (x - x0) / sigma.view(-1, 1, 1, 1)

    return denoiser, seen


def test_scalewise_visits_scales_and_sigmas_in_order():
    target = torch.linspace(-1, 1, 24 * 24).view(1, 1, 24, 24)
    denoiser, seen = _oracle(lambda size: torch.nn.functional.interpolate(target, size=tuple(size), mode="area"))
    out = sample_scalewise(denoiser, SCHEDULE, 1, 1, generator=make_generator(0))
    assert [s for s, _ in seen] == list(SCHEDULE.scales)
    assert [float(sig[0]) for _, sig in seen] == pytest.approx(SCHEDULE.sigmas)
    torch.testing.assert_close(out, target)  # the last step returns the clean estimate


def test_input_of_each_step_is_upsampled_estimate_plus_fresh_noise():
    """Rebuild step 2's input by hand from step 1's estimate and the generator's next draw."""
    inputs = []
    const = torch.full((1, 1, 8, 8), 0.5)

    def denoiser(x, sigma):
        inputs.append(x.clone())
        return (x - const.expand_as(x)[..., : x.shape[-2], : x.shape[-1]] if x.shape[-1] == 8 else x) / sigma.view(-1, 1, 1, 1)

    sched = ScaleSchedule(scales=[8, 16], sigmas=[1.0, 0.6])
    sample_scalewise(denoiser, sched, 1, 1, generator=make_generator(5))
    gen = torch.Generator().manual_seed(5)
    first_noise = torch.randn(1, 1, 8, 8, generator=gen)
    second_noise = torch.randn(1, 1, 16, 16, generator=gen)
    torch.testing.assert_close(inputs[0], first_noise)
    expected = 0.4 * torch.nn.functional.interpolate(const, size=(16, 16), mode="bicubic", align_corners=False) + 0.6 * second_noise
    torch.testing.assert_close(inputs[1], expected)


def test_noise_before_upsampling_order_rebuilt_by_hand():
    """The ablation order: noise at the current scale, then upsample the noisy latent."""
    recorded = []

    def zero_x0(x, sigma):  # predicts x0 = 0
        recorded.append(x.clone())
        return x / sigma.view(-1, 1, 1, 1)

    sched = ScaleSchedule(scales=[8, 16], sigmas=[1.0, 0.6])
    sample_scalewise(zero_x0, sched, 1, 1, generator=make_generator(4), order="noise_then_upsample")
    gen = torch.Generator().manual_seed(4)
    torch.randn(1, 1, 8, 8, generator=gen)  # the starting noise
    eps_small = torch.randn(1, 1, 8, 8, generator=gen)
    expected = torch.nn.functional.interpolate(0.6 * eps_small, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(recorded[1], expected)
    # Upsampled noise is no longer white: neighbouring pixels correlate strongly.
    a, b = recorded[1][..., :, :-1].flatten(), recorded[1][..., :, 1:].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.5


def test_seeds_are_reproducible_and_distinct(sd3_adapter, cond2):
    with torch.no_grad():
        a = sample_scalewise(conditioned(sd3_adapter, cond2), SCHEDULE, 2, 4, generator=make_generator(1))
        b = sample_scalewise(conditioned(sd3_adapter, cond2), SCHEDULE, 2, 4, generator=make_generator(1))
        c = sample_scalewise(conditioned(sd3_adapter, cond2), SCHEDULE, 2, 4, generator=make_generator(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_fewstep_runs_at_the_final_scale():
    denoiser, seen = _oracle(lambda size: torch.zeros(1, 1, *size))
    sample_fewstep(denoiser, SCHEDULE, 1, 1, generator=make_generator(0))
    assert [s for s, _ in seen] == [(24, 24)] * 4


def test_euler_integrates_a_straight_flow_exactly():
    """For x_sigma = (1 - sigma) x0 + sigma eps with the true velocity eps - x0, Euler is exact."""
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    out = sample_euler(lambda x, s: eps - x0, flow_sigmas(5, 3.0), eps.clone())
    torch.testing.assert_close(out, x0)


def test_upsample_modes_and_errors():
    x = torch.randn(1, 2, 4, 4)
    assert upsample(x, (4, 4)) is x
    assert upsample(x, (8, 8), "nearest").shape == (1, 2, 8, 8)
    near = upsample(x, (8, 8), "nearest")
    torch.testing.assert_close(near[..., ::2, ::2], x)
    with pytest.raises(SwdError, match="upsample_mode"):
        upsample(x, (8, 8), "lanczos")
    with pytest.raises(SwdError, match="order"):
        sample_scalewise(lambda x, s: x, SCHEDULE, 1, 1, order="sideways")


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed(seed):
    with pytest.raises(SwdError, match="seed"):
        make_generator(seed)


@torch.no_grad()
def test_one_sample_call_for_either_spec(sd3_adapter, cond2):
    """`sample(adapter, spec)`: a TeacherSampler is the teacher's Euler + CFG sampler, a ScaleSchedule
    the scale-wise one; the same numbers as calling those samplers directly (both are checked
    against diffusers above)."""
    from swd.sampling import TeacherSampler, sample

    uncond = make_cond(1, seed=3)
    teacher = sample(sd3_adapter, TeacherSampler(steps=5, guidance=2.5, shift=2.0), cond2, uncond,
                     make_generator(3), size=(16, 16))
    direct = sample_teacher(guided(sd3_adapter, cond2, uncond, 2.5), (16, 16), 2, sd3_adapter.latent_channels, steps=5,
                            shift=2.0, generator=make_generator(3))
    assert torch.equal(teacher, direct)
    default_size = sample(sd3_adapter, TeacherSampler(steps=2), cond2, uncond, make_generator(0))
    assert default_size.shape[-2:] == (sd3_adapter.config.sample_size,) * 2
    scalewise = sample(sd3_adapter, SCHEDULE, cond2, generator=make_generator(7))
    assert torch.equal(scalewise, sample_scalewise(conditioned(sd3_adapter, cond2), SCHEDULE, 2,
                                                   sd3_adapter.latent_channels, generator=make_generator(7)))
