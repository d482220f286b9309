"""The Gaussian-mixture testbed: exact marginals, the analytic posterior mean against Monte Carlo."""

import math

import pytest
import torch

from swd.data.gmm import (
    AnalyticDenoiser,
    GaussianMixtureImages,
    MixtureData,
    MixtureSpec,
    area_downscale,
    classes_of,
    one_hot_condition,
)
from swd.errors import SwdError
from swd.sampling import add_noise, conditioned, guided, make_generator, sample_scalewise, sample_teacher
from swd.schedules import ScaleSchedule


@pytest.fixture(scope="module")
def small():
    return GaussianMixtureImages(MixtureSpec(size=4, classes=2, modes=2, rank=2, frequencies=2))


def test_marginal_matches_downscaled_samples(small):
    """A_s applied to the full-size mixture: the closed-form mean and covariance of class 0 at 3x3
    agree with the empirical moments of area-downscaled exact samples."""
    gen = torch.Generator().manual_seed(0)
    x, comp = small.sample(torch.zeros(200_000, dtype=torch.long), gen)
    down = area_downscale(x.double(), (3, 3)).flatten(1)
    mean, cov = small.class_moments((3, 3))
    emp_mean = down.mean(0)
    emp_cov = torch.cov(down.T)
    assert (emp_mean - mean[0]).abs().max() < 5e-3
    assert (emp_cov - cov[0]).abs().max() < 5e-3
    # Components of class 0 only, in proportion to their weights.
    assert set(comp.tolist()) == {0, 1}
    w = small.weights[:2] / small.weights[:2].sum()
    assert abs(float((comp == 0).double().mean()) - float(w[0])) < 5e-3


@pytest.mark.parametrize("sigma,cls", [(0.9, 1), (0.6, 0), (0.8, -1)])
def test_posterior_mean_matches_monte_carlo(small, sigma, cls):
    """E[x0 | x_sigma, class] by self-normalised importance sampling over exact prior draws."""
    gen = torch.Generator().manual_seed(1)
    n = 300_000
    prior = torch.full((n,), cls) if cls >= 0 else torch.arange(n) % 2
    x0s, _ = small.sample(prior, gen)
    x0s = x0s.double().flatten(1)
    x0, _ = small.sample(torch.tensor([max(cls, 0)]), gen)
    x = add_noise(x0.double().flatten(1), sigma, torch.randn(1, 48, generator=gen, dtype=torch.float64))
    w = torch.softmax(-((x - (1 - sigma) * x0s) ** 2).sum(1) / (2 * sigma**2), 0)
    assert 1 / (w**2).sum() > 1000  # enough effective samples for the tolerance below
    mc = (w[:, None] * x0s).sum(0)
    exact, resp = small.posterior(x, torch.tensor([sigma], dtype=torch.float64), torch.tensor([cls]))
    assert (mc - exact[0]).abs().max() < 0.02
    assert math.isclose(float(resp.sum()), 1.0, rel_tol=1e-9)
    if cls >= 0:  # components of other classes get no weight given the caption
        assert float(resp[0, [c for c in range(4) if c // 2 != cls]].sum()) == 0.0


def test_posterior_limits(small):
    """At sigma = 1 the posterior mean is the caption's prior mean; near sigma = 0 it is x itself."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 48, generator=gen, dtype=torch.float64)
    mean, _ = small.class_moments((4, 4))
    at_one, _ = small.posterior(x, torch.ones(3, dtype=torch.float64), torch.tensor([0, 1, 1]))
    assert torch.allclose(at_one, mean[[0, 1, 1]], atol=1e-10)
    near_zero, _ = small.posterior(x, torch.full((3,), 1e-6, dtype=torch.float64), torch.tensor([0, 1, 0]))
    assert torch.allclose(near_zero, x, atol=1e-4)


def test_analytic_denoiser_in_the_samplers(small):
    """Velocity interface: x - sigma v is the posterior mean; the samplers and CFG take it unchanged.
    The 28-step teacher's samples have about the true class means (they are exact samples of a
    close ODE), while one step from pure noise returns the class mean exactly."""
    den = AnalyticDenoiser(small)
    cond = one_hot_condition(torch.tensor([0] * 400 + [1] * 400), 2)
    uncond = one_hot_condition(torch.tensor([-1]), 2)
    x = sample_teacher(guided(den, cond, uncond, 1.0), (4, 4), 800, 3, generator=make_generator(0))
    mean, _ = small.class_moments((4, 4))
    assert (x[:400].double().flatten(1).mean(0) - mean[0]).abs().max() < 0.08
    one = ScaleSchedule(scales=[(2, 2)], sigmas=[1.0])
    x1 = sample_scalewise(conditioned(den, cond), one, 800, 3, generator=make_generator(0))
    assert torch.allclose(x1[0].double().flatten(), small.class_moments((2, 2))[0][0], atol=1e-5)


def test_conditions_round_trip():
    classes = torch.tensor([2, -1, 0])
    assert classes_of(one_hot_condition(classes, 3)).tolist() == [2, -1, 0]


def test_data_protocol():
    mix = GaussianMixtureImages(MixtureSpec(size=4, classes=3, modes=1, rank=1))
    data = MixtureData.build(mix, n=30, heldout=6)
    assert data.train_images.shape == (30, 3, 4, 4)
    assert data.heldout_captions == ["class 0", "class 1", "class 2"] * 2
    assert classes_of(data.train_condition(torch.tensor([0, 1, 5]))).tolist() == [0, 1, 2]
    assert classes_of(data.empty_condition()).tolist() == [-1]


def test_bad_spec():
    with pytest.raises(SwdError, match="gmm.floor"):
        MixtureSpec(floor=0.0)
    with pytest.raises(SwdError, match="gmm.classes"):
        MixtureSpec(classes=0)
