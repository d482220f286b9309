"""Distances of generated images to the Gaussian-mixture testbed's known distribution.

No learned network is involved: the true side of every number is computed in closed form from
`swd.data.gmm.GaussianMixtureImages`.

- `fd`: per caption, the Fréchet distance between the samples' mean and covariance and the
  caption's true mixture mean and covariance, in the subspace spanned by every component's mean
  and structured directions (p = C (rank + 1) dimensions, orthonormal). In full pixel space
  (d = 3 S^2) a sample covariance needs N >> d images to be stable; in the subspace a few hundred
  per caption do, and the structured part is where every failure we care about (blur, wrong
  colours, lost modes) shows. The mean over captions is the headline number.
- `residual_ratio`: energy outside that subspace, samples over truth (1 = right amount of fine
  detail; < 1 oversmoothed, > 1 noisy).
- `class_accuracy`: fraction of samples whose most likely true component (exact log-likelihood
  in full pixel space) belongs to their caption; `mode_tv`: total-variation distance between the
  components the samples of a caption fall into and the true within-caption weights, averaged.
- `spectrum_error`: mean |log10| ratio of the radially averaged power spectrum of the samples to
  the true one, E|FFT(x)|^2 = diag(F (S + m m^T) F^H), averaged over the mixture.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from swd.errors import SwdError
from swd.eval.metrics import frechet_distance_from_stats


class ExactReference:
    """Closed-form statistics of the mixture at one size, computed once and reused for every set."""

    def __init__(self, mixture, size=None):
        self.mixture = mixture
        s = mixture.spec.size if size is None else size
        self.size = (s, s) if isinstance(s, int) else tuple(s)
        m = mixture.marginal(self.size)
        self.marginal = m
        a = mixture.downscale_matrix(self.size)
        spans = torch.cat([m.means.T, *(a @ f for f in mixture.factors)], dim=1)  # (d, C (1 + r))
        q, r = torch.linalg.qr(spans)
        keep = r.diagonal().abs() > 1e-9 * r.diagonal().abs().max()
        self.basis = q[:, keep]  # (d, p) orthonormal
        mean, cov = mixture.class_moments(self.size)
        self.class_mean = mean @ self.basis  # (K, p)
        self.class_cov = self.basis.T @ cov @ self.basis  # (K, p, p)
        full_cov = (m.eigvecs * m.eigvals[:, None, :]) @ m.eigvecs.transpose(1, 2)  # (C, d, d)
        second = full_cov + m.means[:, :, None] * m.means[:, None, :]
        resid = torch.eye(m.dim, dtype=torch.float64) - self.basis @ self.basis.T
        self.true_residual = float((mixture.weights[:, None, None] * (resid @ second @ resid)).sum(0).trace())
        self.true_spectrum = self._true_spectrum(second)

    def _true_spectrum(self, second: torch.Tensor) -> np.ndarray:
        """Radial power spectrum of the mixture from its per-component second moments (C, d, d)."""
        h, w = self.size
        d = second.shape[-1]
        # E|F x|^2 per frequency = sum over rows of (F E[x x^T] F^H) diagonal, per channel.
        eye = torch.eye(d, dtype=torch.float64).view(d, 3, h, w)
        basis = torch.fft.fft2(eye).reshape(d, -1)  # column f: DFT of pixel basis -> (d, 3 h w)
        weighted = (self.mixture.weights[:, None, None] * second).sum(0)  # (d, d)
        power = torch.einsum("if,ij,jf->f", basis.conj(), weighted.to(torch.complex128), basis).real
        return radial_profile(power.view(1, 3, h, w).float()).numpy()


def radial_profile(power: torch.Tensor) -> torch.Tensor:
    """Mean power per integer radius of (B, C, H, W) |FFT|^2, averaged over B and C: (R,)."""
    h, w = power.shape[-2:]
    fy = torch.fft.fftfreq(h) * h
    fx = torch.fft.fftfreq(w) * w
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long().flatten()
    p = power.double().mean(dim=(0, 1)).flatten()
    sums = torch.zeros(int(radius.max()) + 1, dtype=torch.float64).index_add_(0, radius, p)
    counts = torch.zeros_like(sums).index_add_(0, radius, torch.ones_like(p))
    return sums / counts.clamp_min(1)


def exact_metrics(samples: torch.Tensor, classes: torch.Tensor, ref: ExactReference) -> dict:
    """Distance of samples (N, 3, h, w) generated for captions `classes` (N,) to the true distribution."""
    if samples.ndim != 4 or tuple(samples.shape[1:]) != (3, *ref.size):
        raise SwdError(f"samples: expected (N, 3, {ref.size[0]}, {ref.size[1]}), got {tuple(samples.shape)}")
    classes = torch.as_tensor(classes, dtype=torch.long)
    if len(classes) != len(samples):
        raise SwdError(f"classes: {len(classes)} labels for {len(samples)} samples")
    x = samples.detach().double().cpu().flatten(1)
    if not torch.isfinite(x).all():
        return {"fd": math.inf, "fd_per_class": [], "residual_ratio": math.inf, "class_accuracy": 0.0,
                "mode_tv": 1.0, "spectrum_error": math.inf, "n": len(x)}
    z = x @ ref.basis
    mix = ref.mixture
    fds = []
    for k in range(mix.spec.classes):
        zk = z[classes == k]
        if len(zk) < 2:
            raise SwdError(f"samples: caption {k} has {len(zk)} samples; need at least 2 per caption")
        fds.append(frechet_distance_from_stats(zk.mean(0).numpy(), np.cov(zk.numpy(), rowvar=False),
                                               ref.class_mean[k].numpy(), ref.class_cov[k].numpy()))
    resid = x - z @ ref.basis.T
    residual = float(resid.square().sum(1).mean()) / ref.true_residual
    # Most likely component at sigma = 0 (the data density itself).
    _, resp = _component_loglik(x, ref)
    comp = resp.argmax(1)
    accuracy = float((mix.component_class[comp] == classes).float().mean())
    tvs = []
    modes = mix.spec.modes
    for k in range(mix.spec.classes):
        mine = comp[classes == k]
        inside = mine[mix.component_class[mine] == k] - k * modes
        hist = torch.bincount(inside, minlength=modes).double() / max(len(mine), 1)
        true = mix.weights[k * modes:(k + 1) * modes] / mix.weights[k * modes:(k + 1) * modes].sum()
        # Samples outside the caption count as mass the histogram misses.
        tvs.append(0.5 * float((hist - true).abs().sum() + (1 - hist.sum())))
    power = torch.fft.fft2(x.view(-1, 3, *ref.size)).abs().square()
    spectrum = radial_profile(power).numpy()
    spectrum_error = float(np.abs(np.log10(np.maximum(spectrum, 1e-12) / ref.true_spectrum)).mean())
    return {"fd": float(np.mean(fds)), "fd_per_class": fds, "residual_ratio": residual,
            "class_accuracy": accuracy, "mode_tv": float(np.mean(tvs)), "spectrum_error": spectrum_error,
            "n": len(x)}


def _component_loglik(x: torch.Tensor, ref: ExactReference):
    m = ref.marginal
    y = torch.einsum("bcd,cde->bce", x[:, None, :] - m.means[None], m.eigvecs)
    loglik = -0.5 * (m.eigvals.log()[None] + y.square() / m.eigvals[None]).sum(-1)
    return loglik, torch.softmax(loglik + ref.mixture.weights.log()[None], dim=1)
