"""Exact metrics against the known mixture: near zero for true samples, large for known failures."""

import numpy as np
import pytest
import torch

from swd.data.gmm import GaussianMixtureImages, MixtureSpec
from swd.errors import SwdError
from swd.eval.exact import ExactReference, exact_metrics, radial_profile


@pytest.fixture(scope="module")
def ref():
    return ExactReference(GaussianMixtureImages(MixtureSpec(size=8, classes=3, modes=2, rank=3, frequencies=3)))


def _true(ref, n_per_class, seed=0):
    classes = torch.arange(n_per_class * 3) % 3
    x, comp = ref.mixture.sample(classes, torch.Generator().manual_seed(seed))
    return x, classes, comp


def test_true_samples_score_near_zero(ref):
    x, classes, _ = _true(ref, 800)
    m = exact_metrics(x, classes, ref)
    assert m["fd"] < 0.2
    assert m["class_accuracy"] == 1.0
    assert m["mode_tv"] < 0.05
    assert abs(m["residual_ratio"] - 1) < 0.03
    assert m["spectrum_error"] < 0.02


def test_fd_bias_shrinks_with_n(ref):
    """The sampling bias of the FD estimate falls like 1 / N (what RESULTS reports as 'stable N')."""
    small = exact_metrics(*_true(ref, 100, seed=1)[:2], ref)["fd"]
    large = exact_metrics(*_true(ref, 800, seed=2)[:2], ref)["fd"]
    assert large < small / 3


def test_failures_are_seen(ref):
    x, classes, comp = _true(ref, 400)
    good = exact_metrics(x, classes, ref)
    # Blur towards the class means (what a posterior mean gives): FD and residual fall apart.
    mean = torch.stack([x[classes == k].mean(0) for k in range(3)])
    shrunk = mean[classes] + 0.3 * (x - mean[classes])
    m = exact_metrics(shrunk, classes, ref)
    assert m["fd"] > 20 * good["fd"] and m["residual_ratio"] < 0.2
    # Mode collapse: only the first component of every class.
    keep = (comp % 2) == 0
    m = exact_metrics(x[keep], classes[keep], ref)
    assert m["mode_tv"] > 0.25 and m["fd"] > 5 * good["fd"]
    # Wrong captions: the samples of class k labelled k + 1.
    m = exact_metrics(x, (classes + 1) % 3, ref)
    assert m["class_accuracy"] == 0.0
    # White noise on top: residual and spectrum error grow.
    noisy = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    m = exact_metrics(noisy, classes, ref)
    assert m["residual_ratio"] > 5 and m["spectrum_error"] > 10 * good["spectrum_error"]
    assert exact_metrics(x * float("nan"), classes, ref)["fd"] == float("inf")


def test_radial_profile_by_hand():
    power = torch.zeros(1, 1, 4, 4)
    power[0, 0, 0, 0] = 8.0  # radius 0
    power[0, 0, 0, 1] = 2.0  # radius 1: one of 8 cells (4 on the axes, 4 diagonal at sqrt(2), rounded)
    power[0, 0, 2, 2] = 3.0  # radius sqrt(8) = 2.83 -> 3, the only cell there
    prof = radial_profile(power)
    assert prof[0] == 8.0 and np.isclose(float(prof[1]), 2.0 / 8) and np.isclose(float(prof[3]), 3.0)


def test_bad_input(ref):
    with pytest.raises(SwdError, match="samples: expected"):
        exact_metrics(torch.zeros(6, 3, 4, 4), torch.arange(6) % 3, ref)
    with pytest.raises(SwdError, match="at least 2"):
        exact_metrics(torch.zeros(3, 3, 8, 8), torch.arange(3), ref)
