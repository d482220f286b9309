"""Sample-quality metrics for the testbed: feature-space distances, coverage, text alignment,
the exact shapes score and one network-free distance.

- `frechet_distance`: FD between Gaussians fitted to two feature sets (FID's formula; with the
  project's own evaluator's features it is *not* FID: compare it only with itself).
- `precision_recall`: k-NN manifold precision and recall (Kynkäänniemi et al. 2019, k = 3).
- `text_alignment`: mean cosine between image and caption embeddings in the evaluator's joint
  space (the CLIP-score analogue).
- `shapes_accuracy`: GenEval-style accuracy of generated shapes from the exact scorer.
- `lap_sliced_wasserstein`: sliced Wasserstein distance between 7x7 Laplacian-pyramid patches
  (Karras et al. 2018, "Progressive GAN"). Named so that it is not confused with SwD, the method.

Feature inputs are (N, D) tensors or arrays; image inputs are (N, 3, H, W) floats in [-1, 1] or
(N, H, W, 3) uint8. Distances are computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from swd.errors import SwdError


def _features(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()
    if t.ndim != 2:
        raise SwdError(f"{name}: expected (N, D) features, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise SwdError(f"{name}: features contain NaN or inf")
    return t


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D), unbiased, float64, of (N, D) features (N >= 2)."""
    f = _features(features, "features").numpy()
    if len(f) < 2:
        raise SwdError(f"features: need at least 2 rows for a covariance, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix via eigh (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2): the Fréchet (W2) distance of Gaussians.

    tr((S1 S2)^1/2) equals tr((S1^1/2 S2 S1^1/2)^1/2), whose argument is symmetric PSD, so it
    comes from eigenvalues alone (no scipy.linalg.sqrtm, no complex round-off).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise SwdError(f"stats: shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _psd_sqrt(s1)
    inner = r1 @ s2 @ r1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)
    return max(fd, 0.0)


def frechet_distance(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance_from_stats(*feature_stats(features1), *feature_stats(features2))


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b)  # float64 Euclidean, (len(a), len(b))


def knn_radii(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (N,)."""
    radii = []
    for start in range(0, len(x), chunk):
        d = _pairwise(x[start : start + chunk], x)
        # The k+1 smallest include the row itself at distance 0.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius): (len(points),) bool."""
    hits = []
    for start in range(0, len(points), chunk):
        d = _pairwise(points[start : start + chunk], centres)
        hits.append((d <= radii[None, :]).any(1))
    return torch.cat(hits)


def precision_recall(real, fake, k: int = 3, chunk: int = 1024) -> dict[str, float]:
    """k-NN manifold precision (fake inside the real manifold) and recall (real inside the fake one).

    Each set's manifold is the union of balls around its points with radius the distance to the
    k-th nearest neighbour in the same set (Kynkäänniemi et al. 2019).
    """
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise SwdError(f"features: real has {real.shape[1]} dims, fake has {fake.shape[1]}")
    if k < 1 or len(real) <= k or len(fake) <= k:
        raise SwdError(f"k: need 1 <= k < set sizes, got k={k} with {len(real)} real and {len(fake)} fake")
    precision = _inside(fake, real, knn_radii(real, k, chunk), chunk).double().mean()
    recall = _inside(real, fake, knn_radii(fake, k, chunk), chunk).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def text_alignment(image_embed, text_embed) -> float:
    """Mean cosine similarity of matched rows of image and text embeddings (N, D) each."""
    a, b = _features(image_embed, "image_embed"), _features(text_embed, "text_embed")
    if a.shape != b.shape:
        raise SwdError(f"embeddings: image {tuple(a.shape)} and text {tuple(b.shape)} must match row for row")
    return float(F.cosine_similarity(a, b, dim=1).mean())


def shapes_accuracy(images, samples: Sequence, value_range: tuple[float, float] = (-1.0, 1.0)) -> dict:
    """Exact-scorer accuracy of generated shapes against the samples whose captions made them:
    overall, GenEval-style mean over categories, and per category."""
    from swd.data.scoring import score_shapes

    report = score_shapes(images, list(samples), value_range)
    return {"accuracy": report.accuracy, "geneval": report.geneval_score, "per_category": report.per_category}


# Laplacian-pyramid sliced Wasserstein distance (Karras et al. 2018) ---------------------------

_GAUSS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap binomial blur of (N, C, H, W), reflect padding."""
    c = x.shape[1]
    k = _GAUSS.to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[..., ::2, ::2]


def _pyr_up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = x
    return 4 * _blur(up)  # zeros inserted: 4x gain keeps the mean


def laplacian_pyramid(x: torch.Tensor, min_size: int = 16) -> list[torch.Tensor]:
    """Band-pass levels from full size down to `min_size`; the last level is the Gaussian one."""
    levels = []
    while x.shape[-1] > min_size:
        small = _pyr_down(x)
        levels.append(x - _pyr_up(small))
        x = small
    levels.append(x)
    return levels


def _as_float_images(images, name: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise SwdError(f"{name}: expected a tensor or array of images, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise SwdError(f"{name}: uint8 images must be (N, H, W, 3), got {tuple(images.shape)}")
        images = images.permute(0, 3, 1, 2).double() / 127.5 - 1
    if images.ndim != 4 or images.shape[1] != 3:
        raise SwdError(f"{name}: expected (N, 3, H, W), got {tuple(images.shape)}")
    return images.detach().cpu().float()  # float32: the pyramid needs no more, and is 2x faster


def _descriptors(images: torch.Tensor, count: int, patch: int, min_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """`count` random patch x patch descriptors per pyramid level, (count, C * patch^2) each,
    normalised per channel over the whole level (Karras et al.'s `finalize_descriptors`)."""
    n = len(images)
    owner = torch.arange(count) * n // count  # descriptors spread evenly over all the images
    per_level: list[list[torch.Tensor]] = []
    for start in range(0, n, 256):  # bounded memory: pyramids of 256 images at a time
        mine = ((owner >= start) & (owner < start + 256)).nonzero().squeeze(1)
        if len(mine) == 0:
            continue
        pyramid = laplacian_pyramid(images[start : start + 256], min_size)
        if not per_level:
            per_level = [[] for _ in pyramid]
        for level, band in enumerate(pyramid):
            h, w = band.shape[-2:]
            if h < patch or w < patch:
                raise SwdError(f"patch: {patch} px patches do not fit a {h}x{w} pyramid level")
            ys = torch.randint(0, h - patch + 1, (len(mine),), generator=gen)
            xs = torch.randint(0, w - patch + 1, (len(mine),), generator=gen)
            offs = torch.arange(patch)
            rows = (ys[:, None] + offs)[:, :, None].expand(-1, patch, patch)  # (M, p, p)
            cols = (xs[:, None] + offs)[:, None, :].expand(-1, patch, patch)
            img = (owner[mine] - start)[:, None, None].expand(-1, patch, patch)
            patches = band.permute(0, 2, 3, 1)[img, rows, cols]  # (M, p, p, C)
            per_level[level].append(patches.permute(0, 3, 1, 2))  # (M, C, p, p)
    out = []
    for chunks in per_level:
        d = torch.cat(chunks).double()
        d = d - d.mean((0, 2, 3), keepdim=True)
        d = d / d.std((0, 2, 3), keepdim=True).clamp(min=1e-12)
        out.append(d.reshape(len(d), -1))
    return out


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int, gen: torch.Generator, repeats: int = 4) -> float:
    """Mean 1-D Wasserstein-1 distance of two equal-size point sets along random unit directions."""
    total = 0.0
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=gen, dtype=torch.float64)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa, _ = (dirs.T @ a.T).sort(1)  # (directions, N): sorting along rows is much faster
        pb, _ = (dirs.T @ b.T).sort(1)
        total += float((pa - pb).abs().mean())
    return total / repeats


def lap_sliced_wasserstein(
    images_a,
    images_b,
    patches_per_image: int = 128,
    patch: int = 7,
    min_size: int = 16,
    directions: int = 128,
    repeats: int = 4,
    seed: int = 0,
) -> dict:
    """Sliced Wasserstein distance between Laplacian-pyramid patch distributions, per level.

    Karras et al. (2018): 7x7 patches from every level of a Laplacian pyramid (full size down to
    16 px), each level's descriptors normalised per channel (per set), then the 1-D Wasserstein
    distance along random directions averaged (4 repeats of 128). Both sets give the same number
    of descriptors (patches_per_image times the smaller set's size) at the same random positions
    (so identical sets give exactly 0). Values are x 1e3, as in the
    paper. Returns {"levels": {side: value}, "mean": value}: the finest level reads noise and
    sharpness, the coarsest colour and layout.
    """
    a, b = _as_float_images(images_a, "images_a"), _as_float_images(images_b, "images_b")
    if a.shape[1:] != b.shape[1:]:
        raise SwdError(f"images: sets differ in shape, {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    if len(a) < 1 or len(b) < 1 or patches_per_image < 1:
        raise SwdError("images: both sets need at least one image, and patches_per_image >= 1")
    count = patches_per_image * min(len(a), len(b))
    # The same patch positions in both sets (common random numbers): identical sets give 0.
    da = _descriptors(a, count, patch, min_size, torch.Generator().manual_seed(seed))
    db = _descriptors(b, count, patch, min_size, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    sides = [a.shape[-1] // 2**i for i in range(len(da))]
    levels = {side: 1e3 * sliced_wasserstein(x, y, directions, gen, repeats) for side, x, y in zip(sides, da, db)}
    return {"levels": levels, "mean": float(np.mean(list(levels.values())))}
