"""Metrics against closed forms, brute force and degradations that must move them."""

import itertools

import numpy as np
import pytest
import torch

from swd.errors import SwdError
from swd.eval import metrics
from swd.eval.metrics import (
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    knn_radii,
    lap_sliced_wasserstein,
    laplacian_pyramid,
    precision_recall,
    shapes_accuracy,
    sliced_wasserstein,
    text_alignment,
)


@pytest.fixture(scope="module")
def shapes_images():
    """192 clean 64 px shapes renders in [-1, 1] and their samples (no cache needed)."""
    from swd.data.shapes import generate_shapes, render_shapes

    samples = generate_shapes(192, seed=3)
    images = torch.from_numpy(render_shapes(samples)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, samples


def test_fd_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(400, 12))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_diagonal_gaussians_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 7.25 + 4 + 1
    assert expected == pytest.approx(12.25)
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fd_general_covariances_match_the_eigenvalues_of_s1_s2():
    # tr sqrt(S1 S2) = sum of sqrt of the (real, non-negative) eigenvalues of S1 S2: an
    # independent route from the symmetric form the implementation uses.
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(5), m2 @ m2.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    cross = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross
    got = frechet_distance_from_stats(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_stats(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9)  # symmetric


def test_fd_from_samples_approaches_the_population_value():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40000, 2)) * np.array([1.0, 2.0])
    y = rng.normal(size=(40000, 2)) * np.array([3.0, 2.0]) + np.array([1.0, 0.0])
    # (1 - 0)^2 + (1 - 3)^2 + (2 - 2)^2 = 5
    assert frechet_distance(x, y) == pytest.approx(5.0, rel=0.03)


def test_feature_stats_and_input_errors():
    mu, cov = feature_stats(np.array([[0.0, 0.0], [2.0, 2.0]]))
    assert np.allclose(mu, [1, 1]) and np.allclose(cov, [[2, 2], [2, 2]])
    with pytest.raises(SwdError, match="at least 2"):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(SwdError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(SwdError, match="shapes differ"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))


def _evaluator_for_tests():
    """The shipped evaluator if it exists, else a fixed random one (same network, seeded init)."""
    from swd.eval.evaluator import evaluator_available, load_evaluator
    from swd.models.evaluator import Evaluator, EvaluatorConfig

    if evaluator_available("emoji"):
        return load_evaluator(data="emoji")
    torch.manual_seed(0)
    return Evaluator(EvaluatorConfig()).eval()


def test_fd_grows_monotonically_with_image_noise(shapes_images):
    from swd.eval.evaluator import extract

    images, _ = shapes_images
    evaluator = _evaluator_for_tests()
    reference = extract(evaluator, images[:96])
    other = images[96:]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(other.shape, generator=gen)
    fds = [frechet_distance(reference, extract(evaluator, (other + s * noise).clamp(-1, 1))) for s in (0.0, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in itertools.pairwise(fds)), fds


def test_knn_radii_match_brute_force():
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(50, 4)))
    d = np.linalg.norm(x.numpy()[:, None] - x.numpy()[None], axis=-1)
    expected = np.sort(d, axis=1)[:, 3]  # column 0 is the point itself
    assert np.allclose(knn_radii(x, 3, chunk=7).numpy(), expected)


def test_precision_recall_identical_sets_cover_each_other():
    x = np.random.default_rng(4).normal(size=(300, 6))
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_disjoint_far_sets_are_zero():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(300, 6)), rng.normal(size=(300, 6)) + 50.0
    assert precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0}


def test_fake_covering_half_of_the_real_modes_has_half_recall():
    rng = np.random.default_rng(6)
    real = np.concatenate([rng.normal(size=(500, 4)), rng.normal(size=(500, 4)) + 30.0])
    fake = rng.normal(size=(500, 4))  # only the first mode, independently drawn
    pr = precision_recall(real, fake)
    assert pr["precision"] > 0.9
    assert 0.4 < pr["recall"] <= 0.5


def test_precision_recall_errors():
    with pytest.raises(SwdError, match="k"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(SwdError, match="dims"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))


def test_text_alignment_is_the_mean_matched_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert text_alignment(a, a) == pytest.approx(1.0)
    assert text_alignment(a, torch.tensor([[0.0, 1.0], [0.0, -1.0]])) == pytest.approx(-0.5)
    with pytest.raises(SwdError, match="row for row"):
        text_alignment(a, a[:1])


def test_text_alignment_higher_for_matched_than_shuffled_heldout_pairs():
    from swd.eval.evaluator import evaluator_available, extract, load_evaluator

    if not evaluator_available("emoji"):
        pytest.skip("no shipped emoji evaluator (train it with `swd eval train-evaluator`)")
    try:
        from swd.data.emoji import load_emoji

        held = load_emoji(split="heldout")
    except SwdError as err:
        pytest.skip(f"emoji set not built: {err}")
    from swd.eval.evaluate import encode_pooled_rows

    evaluator = load_evaluator(data="emoji")
    rows = list(range(0, len(held), max(1, len(held) // 300)))  # ~300 images, spread over concepts
    captions = [held.captions[i] for i in rows]
    image = extract(evaluator, held.tensors()[rows], what="embed")
    pooled = encode_pooled_rows(captions, evaluator.cfg.text_max_length, pool=held.captions)
    text = evaluator.text_embed(pooled).detach()
    shuffled = text[torch.randperm(len(text), generator=torch.Generator().manual_seed(0))]
    matched, mismatched = text_alignment(image, text), text_alignment(image, shuffled)
    assert matched > mismatched + 0.1, (matched, mismatched)


def test_shapes_accuracy_perfect_on_clean_renders_and_low_when_mismatched(shapes_images):
    images, samples = shapes_images
    clean = shapes_accuracy(images, samples)
    assert clean["accuracy"] == 1.0 and set(clean["per_category"]) == {s.category for s in samples}
    rolled = shapes_accuracy(images.roll(1, dims=0), samples)  # every image scored against another caption
    assert rolled["accuracy"] < 0.5
    assert clean["geneval"] == pytest.approx(np.mean(list(clean["per_category"].values())))


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    levels = laplacian_pyramid(x, min_size=16)
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = band + metrics._pyr_up(rebuilt)
    assert torch.allclose(rebuilt, x, atol=1e-12)


def test_sliced_wasserstein_of_a_translated_set_is_the_mean_projected_shift():
    a = torch.randn(200, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    got = sliced_wasserstein(a, a + c, directions=16, gen=torch.Generator().manual_seed(7), repeats=1)
    dirs = torch.randn(5, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    assert got == pytest.approx(float((c @ dirs).abs().mean()), rel=1e-10)


def test_lap_swd_zero_for_identical_sets_and_grows_with_noise_and_blur(shapes_images):
    images, _ = shapes_images
    a, b = images[:48], images[48:96]
    kw = {"patches_per_image": 32}
    same = lap_sliced_wasserstein(a, a, **kw)
    assert same["mean"] == 0.0 and set(same["levels"]) == {64, 32, 16}
    base = lap_sliced_wasserstein(a, b, **kw)["mean"]
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(b.shape, generator=gen)
    noisy = [lap_sliced_wasserstein(a, (b + s * noise).clamp(-1, 1), **kw)["mean"] for s in (0.05, 0.1, 0.2)]
    assert base < noisy[0] < noisy[1] < noisy[2]
    blurred = b.double()
    blurs = []
    for _ in range(2):
        blurred = metrics._blur(blurred)
        blurs.append(lap_sliced_wasserstein(a, blurred, **kw)["levels"][64])
    assert lap_sliced_wasserstein(a, b, **kw)["levels"][64] < blurs[0] < blurs[1]


def test_lap_swd_accepts_uint8_and_rejects_mismatched_sets(shapes_images):
    images, _ = shapes_images
    u8 = ((images[:8] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert lap_sliced_wasserstein(u8, images[:8], patches_per_image=8)["mean"] < 1.0
    with pytest.raises(SwdError, match="differ in shape"):
        lap_sliced_wasserstein(images[:4], images[:4, :, :32, :32])
