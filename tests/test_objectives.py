"""Each objective's losses recomputed by hand: same draws, the formulas of SWD_SPEC section 4
written out again (CFG as two separate model calls, DMD from p_real / p_fake, MMD from token
means, GAN as softplus), never through swd.losses or swd.sampling."""

import math
from typing import get_args

import pytest
import torch
import torch.nn.functional as F

from swd.errors import SwdError
from swd.losses import GANHead
from swd.models import TextCondition, adapter_for
from swd.models.testbed import MMDiTConfig, build_testbed_transformer
from swd.objectives import (OBJECTIVES, Critics, FakeScore, LossConfig, ObjectiveName, objective_class)

B, C, S, TOKENS, BLOCK, CFG = 3, 3, 8, 4, 0, 2.0


def _diffusers_grid():
    """SD3.5's base grid from diffusers' own scheduler (shift 3, 28 steps; the trailing 0 left out)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(28)
    return scheduler.sigmas[:-1].tolist()


GRID = _diffusers_grid()


def _model(seed):
    torch.manual_seed(seed)
    return build_testbed_transformer(MMDiTConfig(sample_size=16, patch_size=2, width=32, head_dim=16, depth=2)).eval()


@pytest.fixture(scope="module")
def nets():
    teacher, fake_model = _model(0), _model(1)  # a fake model that differs from the teacher
    torch.manual_seed(2)
    fake = FakeScore(fake_model, GANHead(32))
    g = torch.Generator().manual_seed(3)
    cond = TextCondition(torch.randn(B, TOKENS, 384, generator=g), torch.randn(B, 384, generator=g))
    uncond = TextCondition(torch.zeros(1, TOKENS, 384), torch.zeros(1, 384))
    x0_hat = torch.randn(B, C, S, S, generator=g).requires_grad_(True)
    target = torch.randn(B, C, S, S, generator=g)
    return teacher, fake, cond, uncond, x0_hat, target


def _objective(name, nets, **losses):
    teacher, fake, cond, uncond, *_ = nets
    t = adapter_for(teacher)
    has_fake = objective_class(name).needs_fake(LossConfig())
    critics = Critics(real=t, features=fake.adapter if has_fake else t, fake=fake if has_fake else None,
                      uncond=uncond, feature_block=BLOCK)
    return objective_class(name)(LossConfig(teacher_cfg=CFG, feature_block=BLOCK, **losses), critics)


def _level(gen, lo, hi):
    idx = torch.randint(lo, hi + 1, (B,), generator=gen)
    return torch.tensor([GRID[i] for i in idx.tolist()], dtype=torch.float32)


def _noised(x0, sigma, eps):
    s = sigma.view(-1, 1, 1, 1)
    return (1 - s) * x0 + s * eps


def _by_hand(name, nets, seed):
    """(total, terms) of one generator step, recomputed from the formulas."""
    teacher, fake, cond, uncond, x0_hat, target = nets
    t, f = adapter_for(teacher), fake.adapter
    gen = torch.Generator().manual_seed(seed)
    lc = LossConfig()
    terms = {}
    on = objective_class(name).terms
    with torch.no_grad():
        if "dmd" in on:
            sigma = _level(gen, 12, 27)
            eps = torch.randn(x0_hat.shape, generator=gen)
            x = _noised(x0_hat, sigma, eps)
            v_cond, v_uncond = t(x, sigma, cond), t(x, sigma, uncond.expand_to(B))
            s = sigma.view(-1, 1, 1, 1)
            x0_real = x - s * (v_uncond + CFG * (v_cond - v_uncond))
            x0_fake = x - s * f(x, sigma, cond)
            p_real, p_fake = x0_hat - x0_real, x0_hat - x0_fake
            g = (p_real - p_fake) / p_real.abs().mean(dim=(1, 2, 3), keepdim=True)
            terms["dmd"] = 0.5 * g.square().mean()  # 0.5 * mse(x0_hat, x0_hat - g)
        if "mmd" in on or "gan" in on:
            sigma = _level(gen, 18, 27)
            eps = torch.randn(x0_hat.shape, generator=gen)
            feature_model = f if objective_class(name).needs_fake(lc) else t
            feats_fake = feature_model.features(_noised(x0_hat, sigma, eps), sigma, cond, BLOCK)
            if "mmd" in on:
                feats_real = feature_model.features(_noised(target, sigma, eps), sigma, cond, BLOCK)
                d = feats_real.mean(dim=1) - feats_fake.mean(dim=1)
                terms["mmd"] = (torch.sqrt(d.square() + 1e-6) - 1e-3).mean()
            if "gan" in on:
                terms["gan"] = F.softplus(-fake.head(feats_fake)).mean()
    weights = {"dmd": lc.dmd_weight, "mmd": lc.mmd_weight, "gan": lc.gan_weight}
    return sum(weights[k] * v for k, v in terms.items()), terms


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_generator_loss_by_hand(nets, name):
    x0_hat, target, cond = nets[4], nets[5], nets[2]
    total, terms = _objective(name, nets).generator_loss(x0_hat, target, cond, torch.Generator().manual_seed(7))
    want_total, want_terms = _by_hand(name, nets, seed=7)
    assert list(terms) == list(want_terms) == [t for t in ("dmd", "mmd", "gan") if t in objective_class(name).terms]
    for k in terms:
        torch.testing.assert_close(terms[k], want_terms[k], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total, want_total, rtol=1e-5, atol=1e-7)
    assert total.requires_grad and math.isfinite(total.item()) and total.item() != 0


def test_fake_loss_by_hand(nets):
    """Fake-score regression (x0 weighting) plus 1e-2 x the discriminator, on the detached sample."""
    teacher, fake, cond, uncond, x0_hat, target = nets
    x0 = x0_hat.detach()
    loss, logs = _objective("swd", nets).fake_loss(x0, target, cond, torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        sigma = _level(gen, 0, 27)
        x = _noised(x0, sigma, torch.randn(x0.shape, generator=gen))
        regression = (x - sigma.view(-1, 1, 1, 1) * fake.adapter(x, sigma, cond) - x0).square().mean()
        sigma_g = _level(gen, 18, 27)
        eps = torch.randn(x0.shape, generator=gen)
        d_fake = fake.head(fake.adapter.features(_noised(x0, sigma_g, eps), sigma_g, cond, BLOCK))
        d_real = fake.head(fake.adapter.features(_noised(target, sigma_g, eps), sigma_g, cond, BLOCK))
        disc = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
    torch.testing.assert_close(logs["fake"], regression, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logs["disc"], disc, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, regression + 1e-2 * disc, rtol=1e-5, atol=1e-7)


def test_zero_weight_switches_a_term_off(nets):
    _, terms = _objective("swd", nets, gan_weight=0.0).generator_loss(nets[4], nets[5], nets[2],
                                                                       torch.Generator().manual_seed(0))
    assert list(terms) == ["dmd", "mmd"]


def test_registry_matches_the_config_literal_and_rejects_unknown_names():
    assert tuple(OBJECTIVES) == get_args(ObjectiveName)
    with pytest.raises(SwdError, match="objective: unknown 'gan-only'"):
        objective_class("gan-only")
    assert [n for n in OBJECTIVES if objective_class(n).full_resolution] == ["dmd2-full"]
    assert [n for n in OBJECTIVES if not objective_class(n).needs_fake(LossConfig())] == ["mmd-only"]


def test_antithetic_dmd_by_hand(nets):
    """DMD scored at x(+eps) and x(-eps), x0 estimates averaged before the direction is formed."""
    teacher, fake, cond, uncond, x0_hat, target = nets
    t, f = adapter_for(teacher), fake.adapter
    _, terms = _objective("dmd-only", nets, dmd_antithetic=True).generator_loss(
        x0_hat, target, cond, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sigma = _level(gen, 12, 27)
        eps = torch.randn(x0_hat.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        x0_real, x0_fake = 0, 0
        for x in (_noised(x0_hat, sigma, eps), _noised(x0_hat, sigma, -eps)):
            v_cond, v_uncond = t(x, sigma, cond), t(x, sigma, uncond.expand_to(B))
            x0_real = x0_real + 0.5 * (x - s * (v_uncond + CFG * (v_cond - v_uncond)))
            x0_fake = x0_fake + 0.5 * (x - s * f(x, sigma, cond))
        p_real, p_fake = x0_hat - x0_real, x0_hat - x0_fake
        g = (p_real - p_fake) / p_real.abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(terms["dmd"], 0.5 * g.square().mean(), rtol=1e-5, atol=1e-7)
    # and it differs from the one-sided term of the same draw (the noise part is really gone)
    _, one_sided = _objective("dmd-only", nets).generator_loss(x0_hat, target, cond, torch.Generator().manual_seed(5))
    assert abs(one_sided["dmd"].item() - terms["dmd"].item()) > 1e-4


def test_antithetic_dmd_cancels_noise_a_linear_score_lets_through():
    """Real and fake x0 estimates linear in x (gains a, b): the antithetic direction is
    (a - b)(1 - sigma) x0_hat whatever eps is; the one-sided one carries (a - b) sigma eps too."""
    from swd.objectives import DMDOnly

    class Linear(torch.nn.Module):  # velocity of the estimate x0 = gain * x in the flow process
        def __init__(self, gain):
            super().__init__()
            self.gain = gain

        def forward(self, x, sigma, cond):
            return (x - self.gain * x) / sigma.view(-1, 1, 1, 1)

    class LinearFake(torch.nn.Module):
        adapter = Linear(0.3)

    x0_hat = torch.randn(4, 3, 8, 8)
    uncond = TextCondition(torch.zeros(1, 2, 8), torch.zeros(1, 8))
    cond = TextCondition(torch.zeros(4, 2, 8), torch.zeros(4, 8))
    critics = Critics(real=Linear(0.7), features=None, fake=LinearFake(), uncond=uncond, feature_block=0)
    losses = []
    for seed in (0, 1):
        objective = DMDOnly(LossConfig(teacher_cfg=1.0, gan_weight=0.0, dmd_antithetic=True), critics)
        gen = torch.Generator().manual_seed(seed)
        sigma = objective.noise_level(objective.lc.dmd_sigma_idx, x0_hat, gen)
        losses.append(objective.dmd_term(x0_hat, cond, torch.Generator().manual_seed(seed)))
        s = sigma.view(-1, 1, 1, 1)
        p_real, p_fake = x0_hat - 0.7 * (1 - s) * x0_hat, x0_hat - 0.3 * (1 - s) * x0_hat
        g = (p_real - p_fake) / p_real.abs().mean(dim=(1, 2, 3), keepdim=True)
        torch.testing.assert_close(losses[-1], 0.5 * g.square().mean(), rtol=1e-5, atol=1e-6)
