"""Loss math checked against independent hand computations (float64 where tolerance matters)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swd.errors import SwdError
from swd.losses import (
    GANHead,
    LinearMMD,
    RBFMMD,
    add_noise,
    build_mmd_loss,
    cfg,
    dmd_gradient,
    dmd_loss,
    fake_score_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    gan_head_widths,
    sample_grid_sigmas,
)
from swd.processes import FLOW

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Noise helpers.


def test_add_noise_hand_value_and_per_sample_broadcast():
    x0 = torch.full((2, 1, 2, 2), 2.0, dtype=F64)
    eps = torch.full((2, 1, 2, 2), 4.0, dtype=F64)
    sigma = torch.tensor([0.25, 1.0], dtype=F64)
    x = add_noise(x0, sigma, eps)
    # sample 0: 0.75 * 2 + 0.25 * 4 = 2.5; sample 1: pure noise.
    assert torch.equal(x[0], torch.full((1, 2, 2), 2.5, dtype=F64))
    assert torch.equal(x[1], eps[1])
    assert torch.equal(add_noise(x0, 0.0, eps), x0)


def test_add_noise_then_flow_x0_round_trip():
    g = _gen(1)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=F64)
    eps = torch.randn(3, 4, 5, 5, generator=g, dtype=F64)
    sigma = torch.tensor([1.0, 0.6022, 0.0089], dtype=F64)
    x = add_noise(x0, sigma, eps)
    v = eps - x0  # the exact flow-matching velocity
    torch.testing.assert_close(FLOW.x0(x, sigma, v), x0, rtol=0, atol=1e-12)
    # A wrong velocity does not recover x0 (the check can fail).
    assert not torch.allclose(FLOW.x0(x, sigma, eps + x0), x0)


def test_flow_x0_from_velocity_hand_value():
    x = torch.tensor([[3.0, 1.0]])
    v = torch.tensor([[2.0, -4.0]])
    torch.testing.assert_close(FLOW.x0(x, torch.tensor([0.5]), v), torch.tensor([[2.0, 3.0]]))


def test_cfg_hand_values():
    uncond = torch.tensor([1.0, -2.0])
    cond = torch.tensor([3.0, 0.0])
    torch.testing.assert_close(cfg(uncond, cond, 4.5), torch.tensor([10.0, 7.0]))  # 1 + 4.5*2, -2 + 4.5*2
    torch.testing.assert_close(cfg(uncond, cond, 1.0), cond)
    torch.testing.assert_close(cfg(uncond, cond, 0.0), uncond)


GRID = torch.tensor(
    [1.0, .9874, .9741, .9601, .9454, .9298, .9133, .8959, .8774, .8577, .8367, .8143, .7904, .7647,
     .7371, .7073, .6751, .6402, .6022, .5606, .5151, .4649, .4093, .3474, .278, .1998, .1109, .0089, 0.0]
)


def test_sample_grid_sigmas_covers_the_inclusive_range_uniformly():
    n = 16_000
    sig = sample_grid_sigmas(GRID, 12, 27, n, _gen(0))
    assert sig.shape == (n,) and sig.dtype == GRID.dtype
    idx = (sig[:, None] == GRID[None, :]).int().argmax(dim=1)
    assert torch.all(GRID[idx] == sig)  # every draw is a grid value
    counts = torch.bincount(idx, minlength=GRID.numel())
    assert counts[:12].sum() == 0 and counts[28] == 0  # nothing outside [12, 27]
    # 16 equally likely indices, both ends included: 1000 expected each, sd ~ 31.
    assert counts[12:28].min() > 850 and counts[12:28].max() < 1150
    assert torch.all(sig <= 0.7904)


def test_sample_grid_sigmas_is_seeded_and_single_index():
    a = sample_grid_sigmas(GRID, 0, 27, 8, _gen(5))
    b = sample_grid_sigmas(GRID, 0, 27, 8, _gen(5))
    assert torch.equal(a, b)
    assert torch.equal(sample_grid_sigmas(GRID, 18, 18, 4, _gen(0)), torch.full((4,), 0.6022))


@pytest.mark.parametrize("lo, hi", [(-1, 3), (5, 4), (0, 29)])
def test_sample_grid_sigmas_rejects_bad_ranges(lo, hi):
    with pytest.raises(SwdError, match="lo_idx"):
        sample_grid_sigmas(GRID, lo, hi, 2, _gen(0))


# DMD.


def _dmd_g_by_hand(x0_hat, x0_real, x0_fake, eps=1e-5):
    """Per sample, with plain Python sums over the flattened values."""
    out = []
    for h, r, f in zip(x0_hat.flatten(1).tolist(), x0_real.flatten(1).tolist(), x0_fake.flatten(1).tolist()):
        p_real = [a - b for a, b in zip(h, r)]
        p_fake = [a - b for a, b in zip(h, f)]
        denom = max(sum(abs(p) for p in p_real) / len(p_real), eps)
        out.append([(pr - pf) / denom for pr, pf in zip(p_real, p_fake)])
    return torch.tensor(out, dtype=F64).reshape(x0_hat.shape)


def test_dmd_literal_numbers():
    # Sample 0: p_real = [1, 2], mean|p_real| = 1.5, p_fake = [0, 1] -> g = [2/3, 2/3].
    # Sample 1: p_real = [-4, 0], mean = 2, p_fake = [0, 0]          -> g = [-2, 0].
    x0_hat = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64, requires_grad=True)
    x0_real = torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=F64)
    x0_fake = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=F64)
    g = torch.tensor([[2 / 3, 2 / 3], [-2.0, 0.0]], dtype=F64)
    torch.testing.assert_close(dmd_gradient(x0_hat, x0_real, x0_fake), g)
    loss = dmd_loss(x0_hat, x0_real, x0_fake)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (4 / 9 + 4 / 9 + 4 + 0) / 4, dtype=F64))
    loss.backward()
    torch.testing.assert_close(x0_hat.grad, g / 4)


def test_dmd_value_and_gradient_match_hand_computation():
    g_ = _gen(2)
    shape = (3, 2, 4, 4)
    x0_hat = torch.randn(shape, generator=g_, dtype=F64)
    # Different magnitudes per sample, so a batch-wide normalizer would give other numbers.
    spread = torch.tensor([0.1, 1.0, 5.0], dtype=F64).view(3, 1, 1, 1)
    x0_real = x0_hat + torch.randn(shape, generator=g_, dtype=F64) * spread
    x0_fake = x0_hat + torch.randn(shape, generator=g_, dtype=F64)
    g = _dmd_g_by_hand(x0_hat, x0_real, x0_fake)

    x = x0_hat.clone().requires_grad_(True)
    loss = dmd_loss(x, x0_real, x0_fake)
    loss.backward()
    torch.testing.assert_close(loss, 0.5 * g.square().mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(x.grad, g / x0_hat.numel(), rtol=1e-10, atol=1e-15)
    assert x0_real.grad is None and x0_fake.grad is None


def test_dmd_step_moves_toward_real_and_away_from_fake():
    x0_hat = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    x0_real = torch.tensor([[1.0, 1.0, 1.0]], dtype=F64)
    x0_fake = torch.tensor([[-1.0, -1.0, -1.0]], dtype=F64)
    dmd_loss(x0_hat, x0_real, x0_fake).backward()
    stepped = x0_hat.detach() - 0.1 * x0_hat.grad
    assert torch.all(stepped > 0)  # along x0_real - x0_fake


def test_dmd_is_nan_safe_when_teacher_agrees_with_sample():
    x0_hat = torch.ones(2, 4, requires_grad=True)
    x0_real = x0_hat.detach().clone()  # p_real == 0 -> denominator 0, guarded by eps
    x0_fake = torch.tensor([[1.0] * 4, [1.0, 1.0, 1.0, 1.0 + 1e-6]])
    loss = dmd_loss(x0_hat, x0_real, x0_fake)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x0_hat.grad).all()
    assert torch.all(x0_hat.grad[0] == 0)  # both scores agree: no push at all
    # The guard is what keeps it finite: without it, sample 0 is 0/0.
    assert torch.isnan(dmd_gradient(x0_hat, x0_real, x0_fake, eps=0.0)[0]).all()


def test_dmd_bf16_input_gives_float32_loss_and_bf16_grad():
    x0_hat = torch.randn(2, 4, 3, 3, generator=_gen(3)).bfloat16().requires_grad_(True)
    x0_real = torch.randn(2, 4, 3, 3, generator=_gen(4)).bfloat16()
    loss = dmd_loss(x0_hat, x0_real, torch.zeros_like(x0_real))
    loss.backward()
    assert loss.dtype == torch.float32 and x0_hat.grad.dtype == torch.bfloat16


# MMD.


def _linear_mmd2_brute_force(x: torch.Tensor, y: torch.Tensor) -> float:
    """Biased MMD^2 of one image from the full kernel matrices, k(a, b) = a . b over all token pairs."""
    kxx = sum(float(a @ b) for a in x for b in x) / len(x) ** 2
    kyy = sum(float(a @ b) for a in y for b in y) / len(y) ** 2
    kxy = sum(float(a @ b) for a in x for b in y) / (len(x) * len(y))
    return kxx + kyy - 2 * kxy


def test_linear_kernel_mmd2_equals_squared_distance_of_token_means():
    g = _gen(6)
    real = torch.randn(3, 5, 4, generator=g, dtype=F64)
    fake = torch.randn(3, 5, 4, generator=g, dtype=F64) + 0.3
    brute = [_linear_mmd2_brute_force(real[b], fake[b]) for b in range(3)]
    means = [float((real[b].mean(0) - fake[b].mean(0)).square().sum()) for b in range(3)]
    for b in range(3):  # the identity MMD^2 = ||d||^2, image by image
        assert brute[b] == pytest.approx(means[b], rel=1e-12)
    # The "mse" form is that MMD^2 divided by C, averaged over the images.
    mse = LinearMMD(form="mse")(real, fake)
    assert float(mse) == pytest.approx(sum(brute) / (3 * 4), rel=1e-12)


def test_linear_mmd_pseudo_huber_hand_values():
    c = 1e-3
    # One image, one token each side, so d = real - fake exactly.
    real = torch.tensor([[[0.004, 0.0, 1.0, -2.0]]], dtype=F64)
    fake = torch.zeros(1, 1, 4, dtype=F64)
    per_entry = [math.sqrt(0.004**2 + c**2) - c, 0.0, math.sqrt(1 + c**2) - c, math.sqrt(4 + c**2) - c]
    # sqrt(17e-6) - 1e-3 = 0.0031231...; large |d| behaves like |d| - c, d = 0 contributes 0.
    assert per_entry[0] == pytest.approx(0.00312310562, rel=1e-8)
    loss = LinearMMD()(real, fake)
    assert float(loss) == pytest.approx(sum(per_entry) / 4, rel=1e-12)
    assert float(LinearMMD(form="mse")(real, fake)) == pytest.approx((0.004**2 + 1 + 4) / 4, rel=1e-12)


def test_linear_mmd_token_means_not_sums():
    real = torch.tensor([[[1.0], [3.0]]], dtype=F64)  # mean 2
    fake = torch.tensor([[[0.0], [0.0], [0.0]]], dtype=F64)  # different token count is fine
    assert float(LinearMMD(form="mse")(real, fake)) == pytest.approx(4.0)


def test_pooled_mmd_misses_what_per_image_sees():
    # Image 0: real mean +1, fake mean -1; image 1: the reverse. Batch means agree (both 0).
    real = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[-1.0, -1.0], [-1.0, -1.0]]], dtype=F64)
    fake = -real
    per_image = LinearMMD(per_image=True)(real, fake)
    pooled = LinearMMD(per_image=False)(real, fake)
    assert float(pooled) == pytest.approx(0.0, abs=1e-15)
    assert float(per_image) == pytest.approx(math.sqrt(4 + 1e-6) - 1e-3, rel=1e-12)  # |d| = 2 everywhere
    assert float(LinearMMD(form="mse", per_image=False)(real, fake)) == 0.0


def test_linear_mmd_gradient_is_finite_at_zero_difference():
    fake = torch.randn(2, 3, 4, generator=_gen(7), requires_grad=True)
    loss = LinearMMD()(fake.detach().clone(), fake)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(fake.grad).all()


def _rbf_mmd2_double_loop(x: torch.Tensor, y: torch.Tensor, h: float) -> float:
    def k(a, b):
        return math.exp(-sum((float(p) - float(q)) ** 2 for p, q in zip(a, b)) / (2 * h * h))

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("h", [0.7, 3.0])
def test_rbf_mmd_matches_double_loop(h):
    g = _gen(8)
    real = torch.randn(2, 4, 3, generator=g, dtype=F64) * 2 + 50  # large offset: tests the centring
    fake = torch.randn(2, 5, 3, generator=g, dtype=F64) * 2 + 50.5
    expected = sum(_rbf_mmd2_double_loop(real[b], fake[b], h) for b in range(2)) / 2
    assert float(RBFMMD(bandwidth=h)(real, fake)) == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_rbf_mmd_float32_with_large_feature_norms():
    # Features far from the origin (|x|^2 ~ 3e6): the squared-distance expansion must not cancel
    # in float32. Reference: float64 double loop.
    g = _gen(16)
    real = torch.randn(1, 6, 3, generator=g, dtype=F64) + 1000
    fake = torch.randn(1, 6, 3, generator=g, dtype=F64) + 1000.5
    expected = _rbf_mmd2_double_loop(real[0], fake[0], 1.0)
    assert float(RBFMMD(bandwidth=1.0)(real.float(), fake.float())) == pytest.approx(expected, abs=1e-4)


def test_rbf_mmd_same_distribution_near_zero_shifted_positive():
    g = _gen(9)
    b, t, c = 8, 128, 4
    x = torch.randn(b, t, c, generator=g, dtype=F64)
    y = torch.randn(b, t, c, generator=g, dtype=F64)
    loss = RBFMMD(bandwidth=2.0)
    same = float(loss(x, y))
    shifted = float(loss(x, y + 1.0))
    # Population values for N(0, I_4), h = 2: 0 for the same law; for a unit shift in every dim,
    # 2 * (4/6)^2 * (1 - exp(-4/12)) = 0.252.
    assert abs(same) < 0.01
    assert shifted == pytest.approx(2 * (4 / 6) ** 2 * (1 - math.exp(-4 / 12)), abs=0.03)


def test_rbf_mmd_default_bandwidth_and_too_few_tokens():
    assert RBFMMD().bandwidth == 100.0
    with pytest.raises(SwdError, match="2 tokens"):
        RBFMMD()(torch.zeros(1, 1, 3), torch.zeros(1, 4, 3))


def test_mmd_registry_builds_by_name_and_rejects_unknown():
    lin = build_mmd_loss("linear", form="mse", per_image=False)
    assert isinstance(lin, LinearMMD) and lin.form == "mse" and not lin.per_image
    rbf = build_mmd_loss("rbf", bandwidth=5.0)
    assert isinstance(rbf, RBFMMD) and rbf.bandwidth == 5.0
    with pytest.raises(SwdError) as err:
        build_mmd_loss("cosine")
    msg = str(err.value)
    assert "cosine" in msg and "linear" in msg and "rbf" in msg and "\n" not in msg


def test_mmd_rejects_bad_options_and_shapes():
    with pytest.raises(SwdError, match="pseudo_huber"):
        LinearMMD(form="huber")
    with pytest.raises(SwdError, match=r"\(B, T, C\)"):
        LinearMMD()(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(SwdError, match="feat_fake"):
        LinearMMD()(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))
    with pytest.raises(SwdError, match="bandwidth"):
        RBFMMD(bandwidth=0.0)


# GAN.


def test_gan_head_widths():
    assert gan_head_widths(1536, 4) == [1536, 1152, 768, 384, 1]
    assert gan_head_widths(64, 4) == [64, 48, 32, 16, 1]  # 64 - 15.75k rounded down
    assert gan_head_widths(10, 3) == [10, 7, 4, 1]
    assert gan_head_widths(5, 1) == [5, 1]
    with pytest.raises(SwdError, match="n_layers"):
        gan_head_widths(8, 0)


def test_gan_head_structure_and_output():
    head = GANHead(64, n_layers=4)
    blocks = list(head.layers)
    assert len(blocks) == 4
    for block, (w_in, w_out) in zip(blocks, [(64, 48), (48, 32), (32, 16), (16, 1)]):
        norm, act, lin = block
        assert isinstance(norm, nn.LayerNorm) and norm.normalized_shape == (w_in,)
        assert isinstance(act, nn.GELU)
        assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (w_in, w_out)
    out = head(torch.randn(3, 7, 64, generator=_gen(10)))
    assert out.shape == (3,)


def test_gan_head_hand_forward():
    torch.manual_seed(0)
    head = GANHead(6, n_layers=2)  # widths [6, 3, 1]
    feats = torch.randn(2, 5, 6, generator=_gen(11))
    h = feats.mean(dim=1)
    for norm, _, lin in head.layers:
        h = F.layer_norm(h, (h.shape[-1],), norm.weight, norm.bias, norm.eps)
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        h = h @ lin.weight.T + lin.bias
    torch.testing.assert_close(head(feats), h.squeeze(-1))


def test_gan_head_is_token_permutation_invariant_and_averages_tokens():
    head = GANHead(16, n_layers=3)
    feats = torch.randn(2, 9, 16, generator=_gen(12))
    perm = torch.randperm(9, generator=_gen(13))
    torch.testing.assert_close(head(feats[:, perm]), head(feats))
    # A mean, not a sum. LayerNorm hides a rescaling except through its eps, so use small
    # features (variance ~1e-6, comparable to eps = 1e-5) where the two differ.
    one = 1e-3 * feats[:, :1]
    torch.testing.assert_close(head(one.expand(2, 6, 16)), head(one))


def test_gan_losses_hand_values():
    ln3 = math.log(3.0)
    fake = torch.tensor([0.0, ln3], dtype=F64)
    real = torch.tensor([ln3, 0.0], dtype=F64)
    # softplus(x) = ln(1 + e^x): softplus(0) = ln2, softplus(ln3) = ln4, softplus(-ln3) = ln(4/3).
    gen = (math.log(2) + math.log(4 / 3)) / 2
    disc = (math.log(2) + math.log(4)) / 2 + (math.log(4 / 3) + math.log(2)) / 2
    assert float(gan_generator_loss(fake)) == pytest.approx(gen, rel=1e-12)
    assert float(gan_discriminator_loss(fake, real)) == pytest.approx(disc, rel=1e-12)


def test_gan_discriminator_loss_is_stable_for_large_logits():
    loss = gan_discriminator_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert float(loss) == pytest.approx(0.0, abs=1e-30)
    assert float(gan_generator_loss(torch.tensor([-200.0]))) == pytest.approx(200.0)


# Fake-score model.


def test_fake_score_loss_value_and_no_gradient_into_sample():
    x0_hat = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64, requires_grad=True)
    pred = torch.tensor([[1.5, 2.0, 1.0]], dtype=F64, requires_grad=True)
    loss = fake_score_loss(pred, x0_hat * 1.0)  # through an op, as in the trainer
    assert loss.item() == pytest.approx((0.25 + 0 + 4) / 3, rel=1e-12)
    loss.backward()
    assert x0_hat.grad is None
    torch.testing.assert_close(pred.grad, torch.tensor([[2 * 0.5, 0.0, 2 * -2.0]], dtype=F64) / 3)


def test_fake_score_loss_detaches_even_a_leaf_sample():
    x0_hat = torch.randn(2, 3, requires_grad=True)
    pred = torch.randn(2, 3)
    loss = fake_score_loss(pred, x0_hat)
    assert not loss.requires_grad  # nothing to train: x0_hat contributed no graph


def test_fake_score_loss_velocity_weighting_by_hand():
    """Per sample error / sigma^2: the velocity MSE, since v = (x - x0) / sigma at a fixed input x."""
    x0_hat = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64)
    pred = torch.tensor([[1.5, 2.0], [1.0, -1.0]], dtype=F64)
    sigma = torch.tensor([0.5, 0.1], dtype=F64)
    loss = fake_score_loss(pred, x0_hat, sigma, weighting="velocity")
    assert loss.item() == pytest.approx((0.25 / 0.25 + 0 + 1 / 0.01 + 1 / 0.01) / 4, rel=1e-12)
    x = torch.tensor([[3.0, 1.0], [2.0, 2.0]], dtype=F64)  # the same number from velocities
    v_pred, v_true = (x - pred) / sigma[:, None], (x - x0_hat) / sigma[:, None]
    assert loss.item() == pytest.approx(float(((v_pred - v_true) ** 2).mean()), rel=1e-12)
    with pytest.raises(SwdError, match="needs the noise levels"):
        fake_score_loss(pred, x0_hat, weighting="velocity")
    with pytest.raises(SwdError, match="unknown"):
        fake_score_loss(pred, x0_hat, sigma, weighting="eps")


@pytest.mark.parametrize("form, per_image", list(itertools.product(["pseudo_huber", "mse"], [True, False])))
def test_linear_mmd_half_precision_upcasts(form, per_image):
    real = torch.randn(2, 3, 4, generator=_gen(14))
    fake = torch.randn(2, 3, 4, generator=_gen(15))
    ref = LinearMMD(form=form, per_image=per_image)(real.bfloat16().double(), fake.bfloat16().double())
    got = LinearMMD(form=form, per_image=per_image)(real.bfloat16(), fake.bfloat16())
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
