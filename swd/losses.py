"""The losses of scale-wise distillation, each a small pure piece of math.

Flow-matching convention (SWD_SPEC section 1): `x_sigma = (1 - sigma) * x0 + sigma * eps`, the
model predicts the velocity `v ~ eps - x0`, and the clean estimate is `x0_hat = x_sigma - sigma * v`.

What lives here (weights and the choice of noise levels belong to the trainer's config):
- `dmd_loss`: distribution matching in the DMD2 form, on the generator's clean estimate.
- `LinearMMD` / `RBFMMD`: MMD between real and generated feature sets of a frozen diffusion model,
  chosen by name through `build_mmd_loss` (config key: "linear" or "rbf").
- `GANHead`, `gan_generator_loss`, `gan_discriminator_loss`: the non-saturating GAN on block features.
- `fake_score_loss`: the fake-score model's regression onto the generator's detached samples.
- `cfg`, `sample_grid_sigmas`: the tiny helpers the above need (`add_noise` is
  `swd.sampling.add_noise`, re-exported; the clean estimate is the forward process's
  `swd.processes.FLOW.x0`, or `process.x0` for a UNet's DDPM process).

None of these call backward or touch an optimizer: they take tensors and return a scalar loss (or a
tensor), so the trainer composes, weights and steps them. Half-precision inputs are upcast to
float32 for the reductions; float64 stays float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from swd.errors import SwdError
from swd.sampling import add_noise  # the forward process lives with the samplers; re-exported here

__all__ = [
    "GANHead",
    "LinearMMD",
    "MMD_LOSSES",
    "RBFMMD",
    "add_noise",
    "build_mmd_loss",
    "cfg",
    "dmd_gradient",
    "dmd_loss",
    "fake_score_loss",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "gan_head_widths",
    "sample_grid_sigmas",
]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 for reductions; other dtypes unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _per_sample(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """Shape a per-sample sigma (B,) as (B, 1, ..., 1) to broadcast against `like`; scalars pass."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        return sigma.reshape(-1, *([1] * (like.ndim - 1)))
    return sigma


# Noise helpers.


def sample_grid_sigmas(
    grid: torch.Tensor,
    lo_idx: int,
    hi_idx: int,
    batch: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `batch` noise levels from the base grid: `grid[idx]`, idx uniform in [lo_idx, hi_idx].

    Both ends are inclusive. With the 28-step SD3.5 shift-3 grid (29 entries, the last is 0) the
    paper uses idx 12..27 for DMD, 18..27 for MMD and 0..27 for the fake-score model. The indices
    are drawn on the generator's device (CPU when none is given) and moved to the grid's.
    Returns sigmas (B,) with the grid's dtype and device.
    """
    if grid.ndim != 1:
        raise SwdError(f"sample_grid_sigmas: grid must be 1-D, got shape {tuple(grid.shape)}")
    if not 0 <= lo_idx <= hi_idx < grid.numel():
        raise SwdError(
            f"sample_grid_sigmas: need 0 <= lo_idx <= hi_idx < {grid.numel()}, "
            f"got lo_idx={lo_idx}, hi_idx={hi_idx}"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randint(lo_idx, hi_idx + 1, (batch,), generator=generator, device=device)
    return grid[idx.to(grid.device)]


def cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: `uncond + scale * (cond - uncond)` (scale 1 gives `cond`)."""
    return uncond + scale * (cond - uncond)


# Distribution matching (DMD2 form).


@torch.no_grad()
def dmd_gradient(
    x0_hat: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """The normalized DMD direction `g`, without autograd.

    `p_real = x0_hat - x0_real`, `p_fake = x0_hat - x0_fake`,
    `g = (p_real - p_fake) / max(mean(|p_real|), eps)`, the mean taken per sample over all
    non-batch dims. The eps guard keeps `g` finite when the teacher agrees exactly with the sample.
    Returned in float32 (or float64 for float64 inputs), same shape as `x0_hat`.
    """
    x0_hat, x0_real, x0_fake = _upcast(x0_hat), _upcast(x0_real), _upcast(x0_fake)
    p_real = x0_hat - x0_real
    p_fake = x0_hat - x0_fake
    dims = tuple(range(1, x0_hat.ndim))
    scale = p_real.abs().mean(dim=dims, keepdim=True).clamp_min(eps)  # (B, 1, ..., 1)
    return (p_real - p_fake) / scale


def dmd_loss(
    x0_hat: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """DMD2 distribution-matching loss on the generator's clean estimate.

    Args:
        x0_hat: generator's clean estimate (B, ...), requires grad.
        x0_real: teacher's x0 prediction (with CFG, see `cfg`) on the re-noised `x0_hat`.
        x0_fake: fake-score model's x0 prediction (no CFG) on the same noised input.
        eps: floor of the per-sample normalizer, in the units of x0.

    With `g` from `dmd_gradient`, `L = 0.5 * mse(x0_hat, stopgrad(x0_hat - g))`, so
    `L = 0.5 * mean(g^2)` and `dL/dx0_hat = g / numel(x0_hat)`: a gradient step moves `x0_hat`
    along `x0_real - x0_fake`. Returns a float32 (float64 for float64 inputs) scalar.
    """
    g = dmd_gradient(x0_hat, x0_real, x0_fake, eps=eps)
    x0 = _upcast(x0_hat)
    target = (x0 - g).detach()
    return 0.5 * F.mse_loss(x0, target)


# Maximum mean discrepancy on frozen diffusion features.


def _check_features(
    name: str, feat_real: torch.Tensor, feat_fake: torch.Tensor, same_batch: bool
) -> None:
    for which, f in (("feat_real", feat_real), ("feat_fake", feat_fake)):
        if f.ndim != 3:
            raise SwdError(f"{name}: {which} must be (B, T, C) features, got shape {tuple(f.shape)}")
    batch_differs = same_batch and feat_real.shape[0] != feat_fake.shape[0]
    if feat_real.shape[-1] != feat_fake.shape[-1] or batch_differs:
        raise SwdError(
            f"{name}: feat_real {tuple(feat_real.shape)} and feat_fake {tuple(feat_fake.shape)} "
            f"must agree in {'B and C' if same_batch else 'C'}"
        )


class LinearMMD:
    """MMD with the linear kernel `k(x, y) = x^T y` on token features (B, T, C).

    For one image with real tokens X (m, C) and generated tokens Y (n, C), the (biased) MMD^2 is
    `mean k(X, X) + mean k(Y, Y) - 2 mean k(X, Y) = ||mean_T(X) - mean_T(Y)||^2`,
    so only the token means matter: `d = mean_T(feat_real) - mean_T(feat_fake)`, shape (B, C).
    The loss is averaged over all B * C entries of d, in one of two forms:
    - "pseudo_huber" (the released code): `mean(sqrt(d^2 + c^2) - c)`, c = 1e-3;
    - "mse" (as the paper writes it): `mean(d^2)` = MMD^2 / C averaged over images.
    `per_image=True` (the paper) compares each generated image with its own target;
    `per_image=False` pools the means over B and T together (d has shape (C,)): the ablation,
    measured worse, which cannot see per-image differences that cancel in the batch mean.
    Gradients flow into both arguments; pass real features computed under `torch.no_grad()`.
    """

    forms = ("pseudo_huber", "mse")

    def __init__(self, form: str = "pseudo_huber", per_image: bool = True, c: float = 1e-3):
        if form not in self.forms:
            raise SwdError(f"mmd form '{form}' is unknown; valid names: {', '.join(self.forms)}")
        if form == "pseudo_huber" and not c > 0:
            raise SwdError(f"mmd c must be > 0 for the pseudo_huber form, got {c}")
        self.form = form
        self.per_image = per_image
        self.c = c

    def __call__(self, feat_real: torch.Tensor, feat_fake: torch.Tensor) -> torch.Tensor:
        _check_features("LinearMMD", feat_real, feat_fake, same_batch=self.per_image)
        real, fake = _upcast(feat_real), _upcast(feat_fake)
        if self.per_image:
            d = real.mean(dim=1) - fake.mean(dim=1)  # (B, C)
        else:
            d = real.mean(dim=(0, 1)) - fake.mean(dim=(0, 1))  # (C,)
        if self.form == "mse":
            return d.square().mean()
        return (torch.sqrt(d.square() + self.c**2) - self.c).mean()


class RBFMMD:
    """Unbiased within-image MMD^2 with the Gaussian kernel on token features (B, T, C).

    `k(x, y) = exp(-||x - y||^2 / (2 * bandwidth^2))` (bandwidth in feature units, default 100).
    For one image with real tokens X (m, C) and generated tokens Y (n, C):
    `MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
             - 2 sum_{i, j} k(x_i, y_j) / (m n)`,
    i.e. the diagonal is left out of the within-set sums (so the estimate is unbiased and can be
    slightly negative). The loss is the mean over the B images. Needs m, n >= 2; memory is
    O(B * T^2). Gradients flow into both arguments.
    """

    def __init__(self, bandwidth: float = 100.0):
        if not bandwidth > 0:
            raise SwdError(f"mmd bandwidth must be > 0, got {bandwidth}")
        self.bandwidth = bandwidth

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, M, C), (B, N, C) -> k (B, M, N), squared distances by the expansion |a|^2+|b|^2-2ab."""
        sq = a.square().sum(-1)[:, :, None] + b.square().sum(-1)[:, None, :] - 2 * a @ b.transpose(1, 2)
        return torch.exp(-sq.clamp_min(0) / (2 * self.bandwidth**2))

    @staticmethod
    def _off_diagonal_mean(k: torch.Tensor) -> torch.Tensor:
        """(B, M, M) -> (B,), the mean over i != j."""
        m = k.shape[-1]
        mask = 1 - torch.eye(m, dtype=k.dtype, device=k.device)
        return (k * mask).sum(dim=(1, 2)) / (m * (m - 1))

    def __call__(self, feat_real: torch.Tensor, feat_fake: torch.Tensor) -> torch.Tensor:
        _check_features("RBFMMD", feat_real, feat_fake, same_batch=True)
        if min(feat_real.shape[1], feat_fake.shape[1]) < 2:
            raise SwdError("RBFMMD: the unbiased estimate needs at least 2 tokens per image")
        x, y = _upcast(feat_real), _upcast(feat_fake)
        # Distances are shift invariant: centre both sets on their joint mean per image so that
        # the expansion does not cancel large norms in float32.
        centre = torch.cat([x, y], dim=1).mean(dim=1, keepdim=True).detach()
        x, y = x - centre, y - centre
        xx = self._off_diagonal_mean(self._kernel(x, x))
        yy = self._off_diagonal_mean(self._kernel(y, y))
        xy = self._kernel(x, y).mean(dim=(1, 2))
        return (xx + yy - 2 * xy).mean()


MMD_LOSSES: dict[str, type] = {"linear": LinearMMD, "rbf": RBFMMD}


def build_mmd_loss(kernel: str, **kwargs) -> LinearMMD | RBFMMD:
    """The MMD loss for a kernel name ("linear" or "rbf"), built with its keyword options."""
    if kernel not in MMD_LOSSES:
        raise SwdError(f"mmd kernel '{kernel}' is unknown; valid names: {', '.join(sorted(MMD_LOSSES))}")
    return MMD_LOSSES[kernel](**kwargs)


# GAN on block features.


def gan_head_widths(in_dim: int, n_layers: int) -> list[int]:
    """Layer widths shrinking linearly from in_dim to 1: `w_k = floor(in_dim - k * (in_dim - 1) / n_layers)`.

    k = 0..n_layers, i.e. `linspace(in_dim, 1, n_layers + 1)` rounded down, computed in integers.
    Example: in_dim=1536, n_layers=4 -> [1536, 1152, 768, 384, 1].
    """
    if in_dim < 1 or n_layers < 1:
        raise SwdError(
            f"GANHead: need in_dim >= 1 and n_layers >= 1, got in_dim={in_dim}, n_layers={n_layers}"
        )
    # floor(in_dim - q) == in_dim - ceil(q) for the non-negative rational q = k (in_dim - 1) / n_layers.
    return [in_dim - (-(-k * (in_dim - 1) // n_layers)) for k in range(n_layers + 1)]


class GANHead(nn.Module):
    """Discriminator head on a block's token features: (B, T, C) -> logits (B,).

    Mean over tokens, then `n_layers` x [LayerNorm(w_k), GELU, Linear(w_k, w_{k+1})] with the
    widths of `gan_head_widths`. Features are cast to the head's dtype (float32 by default).
    """

    def __init__(self, in_dim: int, n_layers: int = 4):
        super().__init__()
        self.widths = gan_head_widths(in_dim, n_layers)
        self.layers = nn.Sequential(
            *(
                nn.Sequential(nn.LayerNorm(w_in), nn.GELU(), nn.Linear(w_in, w_out))
                for w_in, w_out in zip(self.widths[:-1], self.widths[1:])
            )
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[-1] != self.widths[0]:
            raise SwdError(
                f"GANHead: features must be (B, T, {self.widths[0]}), got shape {tuple(features.shape)}"
            )
        dtype = self.layers[0][2].weight.dtype
        pooled = features.to(dtype).mean(dim=1)  # (B, C)
        return self.layers(pooled).squeeze(-1)  # (B,)


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss `mean(softplus(-D(fake)))`; logits (B,)."""
    return F.softplus(-_upcast(logits_fake)).mean()


def gan_discriminator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """Discriminator loss `mean(softplus(D(fake))) + mean(softplus(-D(real)))`; logits (B,).

    Compute `logits_fake` from the generator's detached sample so no gradient reaches it.
    """
    return F.softplus(_upcast(logits_fake)).mean() + F.softplus(-_upcast(logits_real)).mean()


# Fake-score model.


FAKE_WEIGHTINGS = ("x0", "velocity")


def fake_score_loss(x0_fake_pred: torch.Tensor, x0_hat: torch.Tensor, sigma: torch.Tensor | float | None = None,
                    weighting: str = "x0") -> torch.Tensor:
    """Regress the fake model's x0 prediction onto the (detached) generator sample.

    weighting "x0" (the authors' release): `mean((x0_fake_pred - x0_hat)^2)`.
    weighting "velocity": the same error per sample divided by sigma^2, i.e. the velocity MSE the
    teacher was trained with (`v = (x - x0) / sigma`), which weights low noise levels far more; DMD
    reads the fake score at low noise levels too, so it must be accurate there. Needs `sigma` (B,).
    `x0_hat` is detached here, so this loss never trains the generator.
    """
    if weighting not in FAKE_WEIGHTINGS:
        raise SwdError(f"fake weighting '{weighting}' is unknown; valid names: {', '.join(FAKE_WEIGHTINGS)}")
    err = (_upcast(x0_fake_pred) - _upcast(x0_hat.detach())).square()
    if weighting == "x0":
        return err.mean()
    if sigma is None:
        raise SwdError("fake_score_loss: the velocity weighting needs the noise levels sigma")
    sigma = torch.as_tensor(sigma, dtype=err.dtype, device=err.device)
    return (err / _per_sample(sigma, err).square()).mean()
