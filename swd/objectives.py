"""Distillation objectives: which losses train the generator and the fake-score model.

Each objective is a small class in the manner of EDM's `training/loss.py`: it owns its noise-level
draws and its noising, and exposes two calls the trainer makes without knowing which objective
it runs:
  - `fake_loss(x0_hat, target, cond, gen)`: one fake-score (and discriminator) update's loss, on
    the generator's detached sample;
  - `generator_loss(x0_hat, target, cond, gen)`: the generator's weighted total and its terms.
Both are built from the pure functions of `swd.losses`; neither calls backward or touches an
optimizer. The config key `objective` names a class of `OBJECTIVES`.

| objective | generator terms | fake-score model | scales |
|---|---|---|---|
| swd | DMD + MMD + GAN | yes | the schedule's |
| mmd-only | MMD | none | the schedule's |
| dmd-only | DMD + GAN | yes | the schedule's |
| dmd2-full | DMD + GAN | yes | constant full resolution (the few-step baseline) |

A term whose weight in `LossConfig` is 0 is off. Every random draw comes from the step's
generator `gen`, in a fixed order (DMD, then the MMD/GAN level and noise), so seeded runs repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, get_args

import torch

from swd.errors import SwdError
from swd.losses import (GANHead, build_mmd_loss, dmd_loss, fake_score_loss, gan_discriminator_loss,
                        gan_generator_loss, sample_grid_sigmas)
from swd.models import TextCondition, adapter_for
from swd.processes import FLOW
from swd.sampling import guided
from swd.schedules import flow_sigmas

ObjectiveName = Literal["swd", "mmd-only", "dmd-only", "dmd2-full"]
TERMS = ("dmd", "mmd", "gan")  # the generator's loss terms, in the order they are computed


@dataclass
class LossConfig:
    dmd_weight: float = 1.0
    mmd_weight: float = 1.0
    gan_weight: float = 5e-3  # generator's GAN term
    disc_weight: float = 1e-2  # discriminator term in the fake-score update
    # Teacher's CFG inside DMD (empty prompt as unconditional); None: the arch's (4.5 L, 7.0 M, 4.5 testbed).
    teacher_cfg: Optional[float] = None
    dmd_sigma_idx: tuple[int, int] = (12, 27)  # grid indices DMD draws its noise level from (sigma <= .79)
    mmd_sigma_idx: tuple[int, int] = (18, 27)  # and MMD / GAN (sigma <= .60)
    fake_sigma_idx: tuple[int, int] = (0, 27)  # and the fake-score regression (whole grid)
    # Score DMD at eps and -eps and average: the part of x0_real - x0_fake linear in the fresh noise
    # (noise a learned score lets through, zero-mean but as large as the signal) cancels.
    dmd_antithetic: bool = False
    fake_weighting: str = "x0"  # x0 (authors' release) | velocity (the teacher's own loss weighting)
    mmd_kernel: str = "linear"  # linear | rbf
    mmd_bandwidth: float = 100.0  # rbf kernel width, in feature units (SD3.5 features; tiny models need less)
    mmd_form: str = "pseudo_huber"  # pseudo_huber | mse (linear kernel)
    mmd_per_image: bool = True  # False pools token means over the batch (the worse ablation)
    # Block whose image tokens feed MMD and the GAN head; None: by depth (L 20/38, M 11/24, testbed depth // 2).
    feature_block: Optional[int] = None
    feature_source: str = "auto"  # auto (fake model when there is one, else teacher) | teacher | fake


class FakeScore(torch.nn.Module):
    """The fake-score model (a teacher copy, trained on generator samples) and the GAN head."""

    def __init__(self, transformer, head: GANHead, **adapter_kwargs):
        super().__init__()
        self.transformer = transformer
        self.head = head
        # Kept out of the module tree: it wraps the same transformer, registered above.
        self.__dict__["adapter"] = adapter_for(transformer, **adapter_kwargs)


@dataclass
class Critics:
    """The networks an objective reads; the generator is the trainer's.

    real: the velocity DMD matches, `(x, sigma, cond) -> v` (the teacher's adapter, or the exact
    testbed's analytic denoiser); CFG is applied with `uncond` as the unconditional prompt.
    features: the adapter whose block `feature_block` feeds MMD (the teacher's or the fake's).
    """

    real: Callable
    features: object
    fake: Optional[FakeScore]
    uncond: TextCondition
    feature_block: int


class Objective:
    """The shared machinery; subclasses name their generator terms (`terms`)."""

    terms: tuple[str, ...] = ()
    full_resolution = False  # True: every step at the final size (the schedule's sigmas kept)

    @classmethod
    def loss_weights(cls, losses: LossConfig) -> dict[str, float]:
        """Weight of every term (dmd, mmd, gan): the config's for this objective's terms, else 0."""
        return {t: getattr(losses, f"{t}_weight") if t in cls.terms else 0.0 for t in TERMS}

    @classmethod
    def needs_fake(cls, losses: LossConfig) -> bool:
        """DMD reads the fake score and the GAN head sits on the fake model: either needs one."""
        weights = cls.loss_weights(losses)
        return weights["dmd"] > 0 or weights["gan"] > 0

    def __init__(self, losses: LossConfig, critics: Critics):
        self.lc = losses
        self.critics = critics
        # The models' forward process: noising and x0 (flow; DDPM for noise-prediction UNets, whose
        # sigma is the timestep over 1000, so the grid's levels are timesteps there).
        self.process = getattr(critics.features, "process", FLOW)
        self.weights = {t: w for t, w in self.loss_weights(losses).items() if w > 0}
        # The base grid (28-step SD3.5 shift-3 sigmas, the trailing 0 left out) noise levels come from.
        self.grid = torch.tensor(flow_sigmas()[:-1])
        self.mmd = build_mmd_loss(losses.mmd_kernel, **({"form": losses.mmd_form, "per_image": losses.mmd_per_image}
                                                         if losses.mmd_kernel == "linear"
                                                         else {"bandwidth": losses.mmd_bandwidth}))

    def noise_level(self, idx_range: tuple[int, int], like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One sigma per sample (B,) from the grid indices `idx_range` (both ends included)."""
        return sample_grid_sigmas(self.grid, *idx_range, like.shape[0], gen).to(like.device)

    @staticmethod
    def noise(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen).to(like.device)

    def block_features(self, model, x: torch.Tensor, sigma: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        return model.features(x, sigma, cond, self.critics.feature_block).float()  # (B, T, C)

    def fake_loss(self, x0_hat: torch.Tensor, target: torch.Tensor, cond: TextCondition,
                  gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fake-score regression onto the detached sample at a level from the whole grid, plus the
        weighted discriminator loss on fake vs real features (same noise and level for both).

        Returns the loss to minimise and the detached values to log (fake, disc).
        """
        fake = self.critics.fake
        sigma = self.noise_level(self.lc.fake_sigma_idx, x0_hat, gen)
        x = self.process.add_noise(x0_hat, sigma, self.noise(x0_hat, gen))
        x0_fake = self.process.x0(x, sigma, fake.adapter(x, sigma, cond).float())
        regression = fake_score_loss(x0_fake, x0_hat, sigma, self.lc.fake_weighting)
        disc = torch.zeros((), device=x0_hat.device)
        if "gan" in self.weights:
            sigma_g = self.noise_level(self.lc.mmd_sigma_idx, x0_hat, gen)
            eps = self.noise(x0_hat, gen)
            logits_fake = fake.head(self.block_features(fake.adapter, self.process.add_noise(x0_hat, sigma_g, eps), sigma_g, cond))
            logits_real = fake.head(self.block_features(fake.adapter, self.process.add_noise(target, sigma_g, eps), sigma_g, cond))
            disc = gan_discriminator_loss(logits_fake, logits_real)
        return regression + self.lc.disc_weight * disc, {"fake": regression.detach(), "disc": disc.detach()}

    def generator_loss(self, x0_hat: torch.Tensor, target: torch.Tensor, cond: TextCondition,
                       gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the objective's terms on the generator's clean estimate, and the terms.

        x0_hat (B, C, h, w) carries the generator's gradient; target: real data at the same scale.
        """
        terms = {}
        if "dmd" in self.weights:
            terms["dmd"] = self.dmd_term(x0_hat, cond, gen)
        if "mmd" in self.weights or "gan" in self.weights:
            # Real target and sample noised with the SAME eps and level.
            sigma = self.noise_level(self.lc.mmd_sigma_idx, x0_hat, gen)
            eps = self.noise(x0_hat, gen)
            x_fake = self.process.add_noise(x0_hat, sigma, eps)
            feats_fake = self.block_features(self.critics.features, x_fake, sigma, cond)
            if "mmd" in self.weights:
                with torch.no_grad():
                    feats_real = self.block_features(self.critics.features, self.process.add_noise(target, sigma, eps), sigma, cond)
                terms["mmd"] = self.mmd(feats_real, feats_fake)
            if "gan" in self.weights:
                fake = self.critics.fake
                if self.critics.features is fake.adapter:  # the MMD features are the GAN head's input
                    gan_feats = feats_fake
                else:  # noised afresh (same values): its gradient reaches x0_hat on its own path, as before
                    gan_feats = self.block_features(fake.adapter, self.process.add_noise(x0_hat, sigma, eps), sigma, cond)
                terms["gan"] = gan_generator_loss(fake.head(gan_feats))
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, terms

    def dmd_estimates(self, x0_hat: torch.Tensor, cond: TextCondition, gen: torch.Generator,
                      guidance: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_real, x0_fake): both scores' clean estimates of the detached sample re-noised to a
        level from DMD's grid (averaged over eps and -eps when antithetic). DMD moves x0_hat along
        x0_real - x0_fake. `guidance` overrides the real score's CFG (default: losses.teacher_cfg)."""
        guidance = self.lc.teacher_cfg if guidance is None else guidance
        sigma = self.noise_level(self.lc.dmd_sigma_idx, x0_hat, gen)
        eps = self.noise(x0_hat, gen)
        signs = (1.0, -1.0) if self.lc.dmd_antithetic else (1.0,)
        x0_real, x0_fake = 0.0, 0.0
        with torch.no_grad():
            for sign in signs:
                x = self.process.add_noise(x0_hat.detach(), sigma, sign * eps)
                v_real = guided(self.critics.real, cond, self.critics.uncond, guidance)(x, sigma)
                x0_real = x0_real + self.process.x0(x, sigma, v_real.float()) / len(signs)
                x0_fake = x0_fake + self.process.x0(x, sigma, self.critics.fake.adapter(x, sigma, cond).float()) / len(signs)
        return x0_real, x0_fake

    def dmd_term(self, x0_hat: torch.Tensor, cond: TextCondition, gen: torch.Generator) -> torch.Tensor:
        """DMD2: both scores read the detached sample re-noised to a level from the lower grid."""
        return dmd_loss(x0_hat, *self.dmd_estimates(x0_hat, cond, gen))


class SwD(Objective):
    """The paper's objective: DMD + MMD + GAN, scale-wise."""

    terms = ("dmd", "mmd", "gan")


class MMDOnly(Objective):
    """MMD alone: no fake-score model (~7x faster steps; SDXL and Wan students were trained so)."""

    terms = ("mmd",)


class DMDOnly(Objective):
    """DMD + GAN without MMD, scale-wise (the ablation)."""

    terms = ("dmd", "gan")


class DMD2Full(DMDOnly):
    """DMD + GAN on the schedule's sigmas at constant full resolution: the few-step DMD2 baseline."""

    full_resolution = True


OBJECTIVES: dict[str, type[Objective]] = {"swd": SwD, "mmd-only": MMDOnly, "dmd-only": DMDOnly, "dmd2-full": DMD2Full}
assert tuple(OBJECTIVES) == get_args(ObjectiveName)


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise SwdError(f"objective: unknown {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
