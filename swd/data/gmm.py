"""A text-to-image testbed whose data distribution is known exactly: a Gaussian mixture of images.

Each caption ("class 3") owns `modes` Gaussian components over (3, S, S) pixel images; a component
has a smooth colour pattern as its mean and a covariance `U U^T + floor^2 I` whose `rank` columns are
smooth colour patterns too (low frequencies, so the pictures look like soft colour fields, not white
noise). Area downscaling is a linear map A, so at every scale of a schedule the data is again a
known mixture: component means `A m` and covariances `A U U^T A^T + floor^2 A A^T`.

Because the distribution is known, so is the ideal teacher: `AnalyticDenoiser` returns the exact
posterior mean E[x0 | x_sigma, caption] (responsibilities times a Wiener filter per component) in
the velocity interface of the model adapters, so the samplers, classifier-free guidance and the
distillation trainer run on it unchanged. `swd.eval.exact` measures generated images against the
true distribution with no learned network.

Captions are one-hot vectors (token states (B, 1, K) and pooled (B, K)); the empty caption is all
zeros and means the unconditional mixture of every component.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from swd.errors import SwdError
from swd.models.base import TextCondition, sigma_vector


@dataclass(frozen=True)
class MixtureSpec:
    """The testbed's distribution, fixed by a seed. Sizes in pixels, amplitudes in [-1, 1] units."""

    size: int = 16  # largest side
    classes: int = 4  # captions
    modes: int = 2  # components per caption (mode coverage within a caption is measurable)
    rank: int = 6  # smooth directions of variation per component
    mean_scale: float = 0.45  # per-pixel RMS of a component mean
    factor_scale: float = 0.22  # per-pixel RMS of one component's structured variation
    floor: float = 0.04  # isotropic standard deviation under the structure
    frequencies: int = 4  # cosine frequencies per axis of the smooth patterns
    seed: int = 0

    def __post_init__(self):
        for name in ("size", "classes", "modes", "rank", "frequencies"):
            if getattr(self, name) < 1:
                raise SwdError(f"gmm.{name}: must be >= 1, got {getattr(self, name)}")
        if not self.floor > 0:
            raise SwdError(f"gmm.floor: must be > 0 (the covariance must be full rank), got {self.floor}")


def area_downscale(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The trainer's area downscaling (box filter) of (B, C, H, W) images; identity at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="area")


def smooth_patterns(n: int, size: int, frequencies: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size) random colour fields built from low-frequency cosines, unit RMS each.

    Coefficients fall off as 1 / (1 + fx^2 + fy^2), so most energy sits in the coarsest patterns.
    """
    grid = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    f = torch.arange(frequencies, dtype=torch.float64)
    basis_1d = torch.cos(math.pi * f[:, None] * grid[None, :])  # (F, S)
    basis = basis_1d[:, None, :, None] * basis_1d[None, :, None, :]  # (F, F, S, S)
    decay = 1.0 / (1.0 + f[:, None] ** 2 + f[None, :] ** 2)  # (F, F)
    coeffs = torch.randn(n, 3, frequencies, frequencies, generator=gen, dtype=torch.float64) * decay
    fields = torch.einsum("ncab,abij->ncij", coeffs, basis)
    rms = fields.flatten(1).square().mean(1).sqrt().clamp_min(1e-12)
    return fields / rms.view(-1, 1, 1, 1)


@dataclass
class ScaleMarginal:
    """The mixture at one scale: per component mean (C, d) and covariance eigenpairs (C, d), (C, d, d)."""

    size: tuple[int, int]
    means: torch.Tensor  # float64
    eigvals: torch.Tensor
    eigvecs: torch.Tensor  # columns are eigenvectors

    @property
    def dim(self) -> int:
        return self.means.shape[1]


class GaussianMixtureImages:
    """The mixture of `MixtureSpec`: exact sampling, per-scale marginals and the posterior mean.

    Components are numbered class-major: component c belongs to class c // modes. Weights within a
    class are unequal (from the seed) so that mode balance is a real test; classes are equally likely.
    """

    def __init__(self, spec: MixtureSpec = MixtureSpec()):
        self.spec = spec
        gen = torch.Generator().manual_seed(spec.seed)
        n = spec.classes * spec.modes
        s = spec.size
        self.means = (smooth_patterns(n, s, spec.frequencies, gen) * spec.mean_scale).flatten(1)  # (C, d)
        # Each component's variation spreads factor_scale^2 per pixel over its rank directions.
        factors = smooth_patterns(n * spec.rank, s, spec.frequencies, gen).view(n, spec.rank, -1)
        self.factors = factors.transpose(1, 2) * (spec.factor_scale / math.sqrt(spec.rank))  # (C, d, r)
        within = torch.rand(spec.classes, spec.modes, generator=gen, dtype=torch.float64) + 0.5
        within = within / within.sum(1, keepdim=True)
        self.weights = (within / spec.classes).flatten()  # (C,) sums to 1
        self.component_class = torch.arange(n) // spec.modes
        self._marginals: dict[tuple[int, int], ScaleMarginal] = {}

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.spec.size, self.spec.size)

    def captions(self) -> list[str]:
        return [f"class {k}" for k in range(self.spec.classes)]

    def sample(self, classes: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples (B, 3, S, S) float32 of the given classes (B,), and the components drawn."""
        classes = torch.as_tensor(classes, dtype=torch.long)
        within = self.weights.view(self.spec.classes, self.spec.modes)[classes]  # (B, M)
        mode = torch.multinomial(within, 1, generator=gen).squeeze(1)
        comp = classes * self.spec.modes + mode
        z = torch.randn(len(comp), self.spec.rank, generator=gen, dtype=torch.float64)
        noise = torch.randn(len(comp), self.means.shape[1], generator=gen, dtype=torch.float64)
        x = self.means[comp] + torch.einsum("bdr,br->bd", self.factors[comp], z) + self.spec.floor * noise
        return x.view(-1, *self.shape).float(), comp

    def downscale_matrix(self, size: tuple[int, int]) -> torch.Tensor:
        """The area downscaling as a (d_s, d) matrix, read off the same operator the trainer uses."""
        d = self.means.shape[1]
        eye = torch.eye(d, dtype=torch.float64).view(d, *self.shape)
        return area_downscale(eye, size).reshape(d, -1).T.contiguous()

    def marginal(self, size) -> ScaleMarginal:
        """The mixture after area downscaling to `size` (h, w) (cached)."""
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size not in self._marginals:
            a = self.downscale_matrix(size)  # (d_s, d)
            means = self.means @ a.T
            af = torch.einsum("sd,cdr->csr", a, self.factors)  # (C, d_s, r)
            floor = self.spec.floor**2 * (a @ a.T)
            cov = af @ af.transpose(1, 2) + floor  # (C, d_s, d_s)
            vals, vecs = torch.linalg.eigh((cov + cov.transpose(1, 2)) / 2)
            self._marginals[size] = ScaleMarginal(size, means, vals.clamp_min(1e-12), vecs)
        return self._marginals[size]

    def class_moments(self, size) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class mean (K, d_s) and covariance (K, d_s, d_s) of its mixture at `size`, float64."""
        m = self.marginal(size)
        cov_c = (m.eigvecs * m.eigvals[:, None, :]) @ m.eigvecs.transpose(1, 2)
        k, modes = self.spec.classes, self.spec.modes
        w = self.weights.view(k, modes)
        w = w / w.sum(1, keepdim=True)
        means_c = m.means.view(k, modes, -1)
        mean = (w[..., None] * means_c).sum(1)
        second = (w[..., None, None] * (cov_c.view(k, modes, m.dim, m.dim)
                                        + means_c[..., :, None] * means_c[..., None, :])).sum(1)
        return mean, second - mean[:, :, None] * mean[:, None, :]

    def log_prior(self, classes: torch.Tensor) -> torch.Tensor:
        """log p(component | caption), (B, C); class -1 = the empty caption (every component)."""
        classes = torch.as_tensor(classes, dtype=torch.long)
        logw = self.weights.log()
        out = logw.expand(len(classes), -1).clone()
        cond = classes >= 0
        if cond.any():
            same = self.component_class[None, :] == classes[cond][:, None]
            out[cond] = torch.where(same, logw + math.log(self.spec.classes), torch.tensor(-math.inf,
                                                                                      dtype=torch.float64))
        return out

    def posterior(self, x: torch.Tensor, sigma: torch.Tensor, classes: torch.Tensor):
        """Exact E[x0 | x_sigma, caption] and the component responsibilities.

        x (B, d_s) float64 at one scale; sigma (B,) in [0, 1]; classes (B,) (-1 = unconditional).
        Per component: x_sigma ~ N(a m, a^2 S + sigma^2 I), a = 1 - sigma; with S = V diag(l) V^T and
        y = V^T (x - a m): log-lik = -1/2 sum(log(a^2 l + sigma^2) + y^2 / (a^2 l + sigma^2)) and
        E[x0 | x, c] = m + V (a l / (a^2 l + sigma^2) * y). Returns x0 (B, d_s) and resp (B, C).
        """
        size = self._size_of(x.shape[1])
        m = self.marginal(size)
        a = (1 - sigma)[:, None, None]  # (B, 1, 1)
        s2 = sigma.square()[:, None, None]
        diff = x[:, None, :] - a * m.means[None]  # (B, C, d)
        y = torch.einsum("bcd,cde->bce", diff, m.eigvecs)
        denom = a.square() * m.eigvals[None] + s2  # (B, C, d)
        loglik = -0.5 * (denom.log() + y.square() / denom).sum(-1)  # (B, C)
        resp = torch.softmax(loglik + self.log_prior(classes), dim=1)
        x0_c = m.means[None] + torch.einsum("bce,cde->bcd", a * m.eigvals[None] / denom * y, m.eigvecs)
        return (resp[..., None] * x0_c).sum(1), resp

    def _size_of(self, dim: int) -> tuple[int, int]:
        for size in self._marginals:
            if 3 * size[0] * size[1] == dim:
                return size
        side = math.isqrt(dim // 3)
        if 3 * side * side != dim:
            raise SwdError(f"gmm: {dim} values per image is not a square RGB image")
        return (side, side)


def one_hot_condition(classes: torch.Tensor, num_classes: int) -> TextCondition:
    """Captions as one-hot vectors; class -1 (the empty caption) is all zeros."""
    classes = torch.as_tensor(classes, dtype=torch.long)
    pooled = torch.zeros(len(classes), num_classes)
    keep = classes >= 0
    pooled[keep] = F.one_hot(classes[keep], num_classes).float()
    return TextCondition(pooled[:, None, :].clone(), pooled)


def classes_of(cond: TextCondition) -> torch.Tensor:
    """Inverse of `one_hot_condition`: (B,) class ids, -1 where the caption is empty."""
    pooled = cond.pooled.float()
    ids = pooled.argmax(1)
    return torch.where(pooled.max(1).values > 0.5, ids, torch.full_like(ids, -1))


class AnalyticDenoiser(nn.Module):
    """The mixture's exact posterior mean as a velocity model: v = (x - E[x0 | x, c]) / sigma.

    Same interface as the adapters in `swd.models` (latents (B, 3, h, w), sigma (B,), a
    TextCondition), so `sample_teacher`, `sample_scalewise`, `guided` and the trainer's DMD real
    score take it in place of a network. It has no blocks, hence no features.
    """

    latent_channels = 3
    patch_size = 1
    max_latent_size = None
    num_blocks = 0

    def __init__(self, mixture: GaussianMixtureImages):
        super().__init__()
        self.mixture = mixture
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, x: torch.Tensor, sigma, cond: TextCondition) -> torch.Tensor:
        b = x.shape[0]
        sigma = sigma_vector(sigma, b, x.device).to(torch.float64).cpu()
        classes = classes_of(cond.expand_to(b)).cpu()
        flat = x.detach().to("cpu", torch.float64).reshape(b, -1)
        x0, _ = self.mixture.posterior(flat, sigma, classes)
        v = (flat - x0) / sigma.clamp_min(1e-6)[:, None]
        return v.view_as(x).to(x.device, x.dtype)

    def features(self, *args, **kwargs):
        raise SwdError("the analytic teacher has no blocks: take MMD features from a network "
                       "(losses.feature_source: teacher with a network teacher, or fake)")


@dataclass
class MixtureData:
    """The trainer's data protocol (see `swd.train.common`) over a fixed set of exact samples."""

    mixture: GaussianMixtureImages
    train_images: torch.Tensor  # (N, 3, S, S)
    train_classes: torch.Tensor  # (N,)
    heldout_classes: torch.Tensor  # one per held-out "prompt": every class in turn

    @classmethod
    def build(cls, mixture: GaussianMixtureImages, n: int = 8192, heldout: int = 16, seed: int = 1):
        gen = torch.Generator().manual_seed(seed)
        classes = torch.arange(n) % mixture.spec.classes
        images, _ = mixture.sample(classes, gen)
        return cls(mixture, images, classes, torch.arange(heldout) % mixture.spec.classes)

    @cached_property
    def heldout_captions(self) -> list[str]:
        return [f"class {int(k)}" for k in self.heldout_classes]

    def _cond(self, classes) -> TextCondition:
        return one_hot_condition(classes, self.mixture.spec.classes)

    def train_condition(self, idx, drop_prob: float = 0.0) -> TextCondition:
        classes = self.train_classes[idx].clone()
        if drop_prob > 0:
            classes[torch.rand(len(classes)) < drop_prob] = -1
        return self._cond(classes)

    def empty_condition(self) -> TextCondition:
        return self._cond(torch.tensor([-1]))

    def heldout_condition(self, n: int, offset: int = 0) -> TextCondition:
        return self._cond(self.heldout_classes[offset: offset + n])
