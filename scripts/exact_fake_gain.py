"""Where DMD's off-subspace push comes from, read off a finished exact-testbed run.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/exact_fake_gain.py runs/exact/dmd-only-wide-fake [...]

For the run's final generator and fake score (its last checkpoint) at the full 8 px scale: the
generator's off-subspace energy per dimension (v_gen; the truth is the mixture's), and at several
noise levels how much of the noisy input's off-subspace part each denoiser keeps (its "gain"):
the real score (exact), the fake score (learned), and the gain an exact denoiser of the
generator's own off-subspace part would have if that part were isotropic Gaussian (the ideal fake).
DMD moves the generator along x0_real - x0_fake, so where the fake keeps less than the ideal fake
(and the real keeps more), each step adds off-subspace energy; `drive` is the mean of
<P(x0_real - x0_fake), P x0> / |P x0|^2 over the samples (> 0: the step grows the energy), and
`push_energy` the size of DMD's off-subspace direction, |P(x0_real - x0_fake)|^2 over |P x0|^2
(`push_energy_antithetic`: the same with the estimates averaged over eps and -eps).
Prints one JSON line per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from swd.data.gmm import one_hot_condition
from swd.eval.exact_testbed import ExactTestbed
from swd.models import adapter_for
from swd.sampling import conditioned
from swd.train.checkpoint import latest_checkpoint

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.6)


def load_net(tb: ExactTestbed, weights: dict):
    width = weights["transformer_blocks.0.attn.to_q.weight"].shape[0]
    depth = len({k.split(".")[1] for k in weights if k.startswith("transformer_blocks.")})
    net = tb.network(width, depth)
    net.load_state_dict(weights)
    return net.eval()


def gain(x0_pred: torch.Tensor, x_t: torch.Tensor, off: torch.Tensor) -> float:
    """Least-squares scalar a with P x0_pred ~ a P x_t over the batch (P: off-subspace projector)."""
    p, q = x0_pred @ off, x_t @ off
    return float((p * q).sum() / q.square().sum())


@torch.no_grad()
def measure(run: Path, n_per_class: int = 128, seed: int = 7) -> dict:
    tb = ExactTestbed()
    ckpt = latest_checkpoint(run / "checkpoints")
    gen_file = ckpt / ("ema.safetensors" if (ckpt / "ema.safetensors").exists() else "generator.safetensors")
    generator = load_net(tb, load_file(str(gen_file)))
    fake_all = load_file(str(ckpt / "fake.safetensors"))
    fake = load_net(tb, {k[len("transformer."):]: v for k, v in fake_all.items() if k.startswith("transformer.")})
    x0, classes = tb.sample(generator, "scalewise", n_per_class, seed)
    b, d = x0.shape[0], x0[0].numel()
    basis = tb.reference.basis.float()
    off = torch.eye(d) - basis @ basis.T
    flat = x0.reshape(b, d)
    v_gen = float((flat @ off).square().sum(1).mean()) / (d - basis.shape[1])
    v_true = tb.reference.true_residual / (d - basis.shape[1])
    cond = one_hot_condition(classes, tb.spec.classes)
    real, fake_den = conditioned(tb.teacher, cond), conditioned(adapter_for(fake), cond)
    rows = []
    gen = torch.Generator().manual_seed(seed + 1)
    for s in SIGMAS:
        eps = torch.randn(x0.shape, generator=gen)
        x_t = (1 - s) * x0 + s * eps
        sig = torch.full((b,), s)
        x0_real = x_t - s * real(x_t, sig)
        x0_fake = x_t - s * fake_den(x_t, sig)
        x_m = (1 - s) * x0 - s * eps  # the antithetic partner: DMD's noise-linear part cancels in the mean
        both = ((x0_real + x_m - s * real(x_m, sig)) - (x0_fake + x_m - s * fake_den(x_m, sig))) / 2
        ideal = (1 - s) * v_gen / ((1 - s) ** 2 * v_gen + s * s)
        push = ((x0_real - x0_fake).reshape(b, d) @ off * (flat @ off)).sum(1) / (flat @ off).square().sum(1)
        rows.append({"sigma": s, "gain_real": gain(x0_real.reshape(b, d), x_t.reshape(b, d), off),
                     "gain_fake": gain(x0_fake.reshape(b, d), x_t.reshape(b, d), off), "gain_ideal_fake": ideal,
                     "drive": float(push.mean()),
                     "push_energy": float(((x0_real - x0_fake).reshape(b, d) @ off).square().sum(1).mean()
                                          / (flat @ off).square().sum(1).mean()),
                     "push_energy_antithetic": float((both.reshape(b, d) @ off).square().sum(1).mean()
                                                     / (flat @ off).square().sum(1).mean())})
    return {"run": str(run), "checkpoint": ckpt.name, "v_gen_over_true": v_gen / v_true, "per_sigma": rows}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        print(json.dumps(measure(Path(arg))))
