"""The exact-distribution testbed end to end: mixture, analytic teacher, network copy, students, scores.

`ExactTestbed` bundles what every experiment on the Gaussian mixture needs; `distill_exact` runs the
project's distillation trainer on it with one objective (the analytic denoiser is DMD's real score,
a network regressed onto it seeds the generator and fake model and gives the MMD features), scoring
the student against the true distribution as it trains. The CI test and `scripts/exact_testbed.py`
(the tables and curves of docs/RESULTS.md) both go through here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from swd.data.gmm import AnalyticDenoiser, GaussianMixtureImages, MixtureData, MixtureSpec, one_hot_condition
from swd.eval.exact import ExactReference, exact_metrics
from swd.models import adapter_for
from swd.models.testbed import MMDiTConfig, build_testbed_transformer
from swd.sampling import conditioned, guided, make_generator, sample_fewstep, sample_scalewise, sample_teacher
from swd.schedules import ScaleSchedule, flow_sigmas
from swd.train.regress import regress_onto

# The paper's 4-step boundaries in the 28-step shift-3 grid: sigmas 1, .8959, .7371, .6022.
BOUNDARIES_4 = (0, 7, 14, 18)


def exact_schedule(size: int, full_resolution: bool = False) -> ScaleSchedule:
    """4 steps from half to full size, the ratios of SD3.5's 64 -> 80 -> 96 -> 128 latents."""
    scales = [size // 2, size * 5 // 8, size * 3 // 4, size]
    if full_resolution:
        scales = [size] * 4
    name = f"gmm{size}-{'full-' if full_resolution else ''}4"
    return ScaleSchedule.from_boundaries(scales, list(BOUNDARIES_4), flow_sigmas(), name=name)


@dataclass
class ExactTestbed:
    spec: MixtureSpec = field(default_factory=lambda: MixtureSpec(size=8, rank=4, frequencies=3))
    train_images: int = 8192

    def __post_init__(self):
        self.mixture = GaussianMixtureImages(self.spec)
        self.reference = ExactReference(self.mixture)
        self.data = MixtureData.build(self.mixture, n=self.train_images)
        self.teacher = AnalyticDenoiser(self.mixture)
        self.schedule = exact_schedule(self.spec.size)

    @property
    def sizes(self) -> list[int]:
        return [h for h, _ in self.schedule.scales]

    def network(self, width: int = 64, depth: int = 2, seed: int = 0):
        """A fresh pixel-space MMDiT (patch 1) taking the one-hot captions."""
        torch.manual_seed(seed)
        cfg = MMDiTConfig(sample_size=self.spec.size, patch_size=1, width=width, head_dim=16, depth=depth,
                          text_dim=self.spec.classes)
        return build_testbed_transformer(cfg)

    def regressed_network(self, steps: int, width: int = 64, depth: int = 2, lr: float = 2e-3, seed: int = 0,
                          progress: bool = False):
        net = self.network(width, depth, seed)
        regress_onto(self.teacher, net, self.data, self.sizes, steps, lr=lr, seed=seed, progress=progress)
        return net

    def prompts(self, n_per_class: int) -> torch.Tensor:
        return torch.arange(n_per_class * self.spec.classes) % self.spec.classes

    @torch.no_grad()
    def sample(self, model, how: str, n_per_class: int = 256, seed: int = 0, guidance: float = 1.0,
               schedule: Optional[ScaleSchedule] = None, **sampler_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples of `model` (adapter or diffusers model) for every class: how = teacher28 | fewstep | scalewise."""
        adapter = model if isinstance(model, AnalyticDenoiser) else adapter_for(model)
        classes = self.prompts(n_per_class)
        cond = one_hot_condition(classes, self.spec.classes)
        uncond = one_hot_condition(torch.tensor([-1]), self.spec.classes)
        den = guided(adapter, cond, uncond, guidance) if guidance != 1.0 else conditioned(adapter, cond)
        gen, n, schedule = make_generator(seed), len(classes), schedule or self.schedule
        if how == "teacher28":
            x = sample_teacher(den, schedule.final_size, n, 3, generator=gen)
        elif how == "fewstep":
            x = sample_fewstep(den, schedule, n, 3, generator=gen, **sampler_kwargs)
        elif how == "scalewise":
            x = sample_scalewise(den, schedule, n, 3, generator=gen, **sampler_kwargs)
        else:
            raise ValueError(f"unknown sampler {how!r}")
        return x, classes

    def score(self, model, how: str, n_per_class: int = 256, seed: int = 0, **kwargs) -> dict:
        x, classes = self.sample(model, how, n_per_class, seed, **kwargs)
        return exact_metrics(x, classes, self.reference)

    def evaluation(self, n_per_class: int = 128, seed: int = 1234, **sampler_kwargs):
        """The trainer's evaluation callback: the student sampled on its schedule, scored exactly."""

        def evaluate(model, schedule, device, precision) -> dict:
            was = model.training
            model.eval()
            how = "scalewise" if schedule.is_scale_wise else "fewstep"
            metrics = self.score(model, how, n_per_class, seed, schedule=schedule, **sampler_kwargs)
            model.train(was)
            return {k: v for k, v in metrics.items() if k != "fd_per_class"}

        return evaluate


def distill_exact(testbed: ExactTestbed, init_network, objective: str, run_dir: str | Path, steps: int,
                  overrides: Optional[dict] = None, eval_every: int = 0, eval_n_per_class: int = 128,
                  real_score=None, fake_init=None):
    """Distill a student from `init_network` on the mixture with the project's trainer; returns
    (DistillResult, list of eval records). `overrides`: dotted config keys, as `--set` takes them.
    `fake_init`: the network the fake score starts from (default: a copy of `init_network`)."""
    from swd.config import load_config
    from swd.train.distill import DistillConfig, train_distill

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    testbed.schedule.save(run_dir / "schedule.yaml")
    base = {"run_dir": str(run_dir), "objective": objective, "schedule": str(run_dir / "schedule.yaml"),
            "losses.teacher_cfg": 1.0, "losses.feature_block": 1, "generator.lr": 1e-4, "fake.lr": 1e-4,
            "train.steps": steps, "train.batch_size": 64, "train.fake_updates": 2, "train.precision": "fp32",
            "train.device": "cpu", "train.log_every": 1, "train.sample_every": 10**9,
            "train.checkpoint_every": 10**9, "train.keep_checkpoints": 1, "train.eval_every": eval_every,
            "train.eval_n": max(4, eval_n_per_class * testbed.spec.classes), "train.export_merged": True}
    cfg = load_config(DistillConfig, None, [f"{k}={v}" for k, v in {**base, **(overrides or {})}.items()])
    result = train_distill(cfg, data=testbed.data, teacher=copy.deepcopy(init_network),
                           real_score=real_score if real_score is not None else testbed.teacher,
                           evaluation=testbed.evaluation(eval_n_per_class) if eval_every else None,
                           fake_init=fake_init)
    return result
