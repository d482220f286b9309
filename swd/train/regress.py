"""A network copy of a reference denoiser, trained by regression: the exact testbed's "teacher".

Distillation starts from a pretrained network: the generator and the fake-score model are copies
of it and the MMD features come from it. The exact testbed's ideal teacher is a formula, so we
mimic "a network that learned the data" by regressing a small network onto the formula's velocity
at every scale and noise level the trainer visits. Regressing onto the exact posterior mean rather
than onto `eps - x0` has the same minimiser with far less variance, so a few hundred steps get
close; how close is measured (its 28-step samples against the truth), not assumed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from swd.errors import SwdError
from swd.models import adapter_for
from swd.sampling import add_noise
from swd.train.common import resize_area


def regression_sigmas(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Half logit-normal (SD3's density, dense mid-range), half uniform (covers both ends); (B,)."""
    logit_normal = torch.sigmoid(torch.randn(batch, generator=gen))
    uniform = torch.rand(batch, generator=gen)
    pick = torch.rand(batch, generator=gen) < 0.5
    return torch.where(pick, logit_normal, uniform).clamp(1e-3, 1.0)


def regress_onto(reference, model: torch.nn.Module, data, sizes: list[int], steps: int, batch_size: int = 64,
                 lr: float = 1e-3, caption_dropout: float = 0.1, seed: int = 0, progress: bool = True) -> list[float]:
    """Train `model` (a diffusers transformer) so its velocity matches `reference` (an adapter-like
    velocity model) on noised data at `sizes`; lr decays linearly to 0. Returns the loss per step."""
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise SwdError(f"regression: need steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    gen = torch.Generator().manual_seed(seed)
    adapter = adapter_for(model)
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / steps)
    images = data.train_images
    losses = []
    for step in tqdm(range(steps), desc="regress", disable=not progress, dynamic_ncols=True):
        size = sizes[step % len(sizes)]  # round-robin, as the trainers do
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x0 = resize_area(images[idx], size)
        cond = data.train_condition(idx)
        if caption_dropout > 0:  # the unconditional score, for CFG
            drop = torch.rand(batch_size, generator=gen) < caption_dropout
            empty = data.empty_condition()
            cond.prompt_embeds[drop] = empty.prompt_embeds
            cond.pooled[drop] = empty.pooled
        sigma = regression_sigmas(batch_size, gen)
        x = add_noise(x0, sigma, torch.randn(x0.shape, generator=gen))
        with torch.no_grad():
            target = reference(x, sigma, cond)
        loss = F.mse_loss(adapter(x, sigma, cond).float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval().requires_grad_(False)
    return losses
