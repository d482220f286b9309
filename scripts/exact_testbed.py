"""Runs of the exact-distribution (Gaussian-mixture) testbed for docs/RESULTS.md.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/exact_testbed.py --out docs/results/exact [--only NAME ...]

Writes one JSON per row (sampler rows and distillation runs with their exact-distance traces) into
--out; `--table` prints the markdown tables of RESULTS from those JSONs without running anything.
Every number comes from `swd.eval.exact` against the closed-form mixture.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from swd.eval.exact import exact_metrics
from swd.eval.exact_testbed import ExactTestbed, distill_exact, exact_schedule

N_PER_CLASS = 256  # final scores; traces use 128 per class
INIT_STEPS = 2000  # regression of the network copy onto the analytic teacher

# Distillation runs: (name, objective, steps, config overrides). The DMD settings after the fix:
# 5 fake updates per generator step and a fake-score learning rate 10x the generator's.
DMD_FIXED = {"train.fake_updates": 5, "generator.lr": 3e-5, "fake.lr": 3e-4}
RUNS = [
    ("mmd-only", "mmd-only", 160, {"generator.lr": 3e-5}),
    ("dmd-only", "dmd-only", 160, DMD_FIXED),
    ("swd", "swd", 160, DMD_FIXED),
    ("dmd2-full", "dmd2-full", 160, DMD_FIXED),
    # Five times longer: where the traces of the 160-step runs, still falling, level off.
    ("swd-800", "swd", 800, DMD_FIXED),
    ("dmd-only-800", "dmd-only", 800, DMD_FIXED),
    # Off-subspace energy grows in both long runs; DMD sees the 0.04 floor only at its lowest sigmas.
    ("dmd-only-low-sigma", "dmd-only", 300, {**DMD_FIXED, "losses.dmd_sigma_idx": [22, 27]}),
    # The collapse, reproduced: the old CPU preset's 2 fake updates at the generator's learning rate.
    ("dmd-only-old-preset", "dmd-only", 120, {"train.fake_updates": 2, "generator.lr": 1e-4, "fake.lr": 1e-4}),
    ("dmd-only-equal-lr-5-updates", "dmd-only", 120, {"train.fake_updates": 5, "generator.lr": 3e-5,
                                                      "fake.lr": 3e-5}),
    # Fake-score capacity: the same runs with a 4x wider fake score (regressed onto the analytic
    # teacher like the copy), to see whether the off-subspace energy still grows.
    ("dmd-only-wide-fake", "dmd-only", 300, DMD_FIXED, {"fake": "w128"}),
    ("swd-wide-fake", "swd", 300, DMD_FIXED, {"fake": "w128"}),
    # The fake score lets fresh noise through where the exact real score removes it: DMD's
    # direction then carries zero-mean noise. Antithetic noise (eps and -eps) cancels that part.
    ("dmd-only-antithetic", "dmd-only", 300, {**DMD_FIXED, "losses.dmd_antithetic": True}),
    ("swd-antithetic", "swd", 300, {**DMD_FIXED, "losses.dmd_antithetic": True}),
    # DMD alone: dmd-only also carries DMD2's GAN term (generator 5e-3, discriminator 1e-2).
    ("dmd-no-gan", "dmd-only", 300, {**DMD_FIXED, "losses.gan_weight": 0.0, "losses.disc_weight": 0.0}),
    # An EMA of the generator (scored and exported in its place) averages out parameter noise.
    ("dmd-only-ema", "dmd-only", 300, {**DMD_FIXED, "train.ema_decay": 0.99}),
    ("swd-ema", "swd", 300, {**DMD_FIXED, "train.ema_decay": 0.99}),
    ("swd-ema-800", "swd", 800, {**DMD_FIXED, "train.ema_decay": 0.99}),
    # Generator capacity: the wider network as the copy (generator, fake score and features all 4x wider).
    ("dmd-only-wide-all", "dmd-only", 300, DMD_FIXED, {"copy": "w128"}),
    ("dmd-only-ema-800", "dmd-only", 800, {**DMD_FIXED, "train.ema_decay": 0.99}),
    # The optimiser: the generator's lr falls linearly to zero over the run (the fake score keeps its lr).
    ("dmd-only-cool", "dmd-only", 300, {**DMD_FIXED, "generator.decay_steps": 300}),
    ("swd-cool", "swd", 300, {**DMD_FIXED, "generator.decay_steps": 300}),
    ("swd-cool-800", "swd", 800, {**DMD_FIXED, "generator.decay_steps": 800}),
    ("dmd-only-cool-800", "dmd-only", 800, {**DMD_FIXED, "generator.decay_steps": 800}),
]
# Networks other than the copy (a run's {"fake": name} or {"copy": name}, the copy then seeding the
# generator, the fake score and the features): name -> (width, depth), regressed like the copy.
FAKE_NETS = {"w128": (128, 2)}


def clean(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "fd_per_class"}


def write(out: Path, name: str, record: dict) -> None:
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.get("final", {}).items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs/results/exact")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--table", action="store_true", help="print the tables (and plot the traces) of --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(out))
        print(trace_table(out))
        plot_traces(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tb = ExactTestbed()
    want = lambda name: args.only is None or name in args.only  # noqa: E731
    meta = {"spec": tb.spec.__dict__, "schedule": tb.schedule.to_dict(), "date": time.strftime("%Y-%m-%d"),
            "threads": torch.get_num_threads(), "n_per_class": N_PER_CLASS}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))

    if want("stability"):  # how large N must be: exact samples against the truth
        rows = []
        for n in (32, 64, 128, 256, 512, 1024):
            classes = tb.prompts(n)
            x, _ = tb.mixture.sample(classes, torch.Generator().manual_seed(100 + n))
            rows.append({"n_per_class": n, **clean(exact_metrics(x, classes, tb.reference))})
        (out / "stability.json").write_text(json.dumps(rows, indent=1))
    if want("analytic"):
        for name, how, kw in [("analytic-28", "teacher28", {}), ("analytic-28-cfg2", "teacher28", {"guidance": 2.0}),
                              ("analytic-full-4", "fewstep", {}), ("analytic-scalewise-4", "scalewise", {}),
                              ("analytic-scalewise-4-nearest", "scalewise", {"upsample_mode": "nearest"}),
                              ("analytic-scalewise-4-noise-first", "scalewise", {"order": "noise_then_upsample"})]:
            t = time.time()
            m = tb.score(tb.teacher, how, N_PER_CLASS, **kw)
            write(out, name, {"final": clean(m), "seconds": time.time() - t})

    # The network copy of the analytic teacher (regressed once; safetensors, reloaded on later runs).
    init_path = out / "init-network.safetensors"
    net = tb.network()
    if init_path.exists():
        net.load_state_dict(load_file(str(init_path)))
    else:
        t = time.time()
        net = tb.regressed_network(INIT_STEPS)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(init_path))
        (out / "init-network.json").write_text(json.dumps({"steps": INIT_STEPS, "batch": 64, "lr": 2e-3,
                                                          "cpu_minutes": (time.time() - t) / 60}))
    if want("network"):
        for name, how in [("network-28", "teacher28"), ("network-full-4", "fewstep"),
                          ("network-scalewise-4", "scalewise")]:
            write(out, name, {"final": clean(tb.score(net, how, N_PER_CLASS))})

    fakes = {}
    for name, objective, steps, overrides, *choice in RUNS:
        if not want(name):
            continue
        nets = choice[0] if choice else {}
        for which in nets.values():
            if which not in fakes:
                fakes[which] = regressed_fake(tb, out, which)
        fake_net = fakes[nets["fake"]] if "fake" in nets else None
        copy_net = fakes[nets["copy"]] if "copy" in nets else net
        run_dir = Path("runs/exact") / name
        shutil.rmtree(run_dir, ignore_errors=True)
        t = time.time()
        result = distill_exact(tb, copy_net, objective, run_dir, steps, overrides=overrides, eval_every=steps // 8,
                               fake_init=fake_net)
        minutes = (time.time() - t) / 60
        trace = [json.loads(line) for line in open(run_dir / "log.jsonl")]
        trace = [{"step": r["step"], **r["eval"]} for r in trace if "eval" in r]
        how = "fewstep" if objective == "dmd2-full" else "scalewise"
        schedule = exact_schedule(tb.spec.size, full_resolution=objective == "dmd2-full")
        # The exported student (the EMA when train.ema_decay > 0, as the trace scores), else the generator.
        student = type(copy_net).from_pretrained(result.export_dir) if overrides.get("train.ema_decay") else result.generator
        final = clean(tb.score(student, how, N_PER_CLASS, schedule=schedule))
        write(out, name, {"objective": objective, "steps": steps, "overrides": overrides,
                          **{k: {"name": v, "width_depth": FAKE_NETS[v]} for k, v in nets.items()}, "trace": trace,
                          "final": final, "minutes_with_evals": minutes})
        if objective != "dmd2-full":  # the broken sampler on the same student
            broken = clean(tb.score(student, "scalewise", N_PER_CLASS, order="noise_then_upsample"))
            write(out, f"{name}-noise-first", {"final": broken})


def regressed_fake(tb: ExactTestbed, out: Path, name: str):
    """A fake-score network of FAKE_NETS[name], regressed onto the analytic teacher like the copy
    (cached as safetensors), with its own 28-step samples scored as the row `fake-<name>-28`."""
    width, depth = FAKE_NETS[name]
    path = out / f"init-fake-{name}.safetensors"
    net = tb.network(width, depth)
    if path.exists():
        net.load_state_dict(load_file(str(path)))
        return net
    t = time.time()
    net = tb.regressed_network(INIT_STEPS, width, depth)
    minutes = (time.time() - t) / 60
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    write(out, f"fake-{name}-28", {"final": clean(tb.score(net, "teacher28", N_PER_CLASS)), "width": width,
                                   "depth": depth, "regress_steps": INIT_STEPS, "cpu_minutes": minutes})
    return net


def table(out: Path) -> str:
    rows = []
    for f in sorted(out.glob("*.json")):
        if f.stem in ("meta", "stability", "init-network"):
            continue
        r = json.loads(f.read_text())
        m = r["final"]
        rows.append(f"| {f.stem} | {m['fd']:.3f} | {m['residual_ratio']:.2f} | {m['class_accuracy']:.3f} | "
                    f"{m['mode_tv']:.3f} | {m['spectrum_error']:.3f} |")
    head = "| row | exact FD | residual ratio | class accuracy | mode TV | spectrum error |\n|---|---|---|---|---|---|"
    return head + "\n" + "\n".join(rows)


def _traces(out: Path) -> dict:
    return {f.stem: json.loads(f.read_text())["trace"] for f in sorted(out.glob("*.json"))
            if "trace" in json.loads(f.read_text())}


def trace_table(out: Path) -> str:
    traces = _traces(out)
    steps = sorted({t["step"] for trace in traces.values() for t in trace})
    head = "| run | " + " | ".join(f"step {s}" for s in steps) + " |\n|---|" + "---|" * len(steps)
    rows = []
    for name, trace in traces.items():
        by_step = {t["step"]: t["fd"] for t in trace}
        rows.append(f"| {name} | " + " | ".join(f"{by_step[s]:.2f}" if s in by_step else "" for s in steps) + " |")
    return head + "\n" + "\n".join(rows)


def plot_traces(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, trace) in enumerate(_traces(out).items()):  # 10 colours, then the next line style
        ax.plot([t["step"] for t in trace], [t["fd"] for t in trace], marker="o", ms=3, label=name,
                ls=("-", "--", ":")[i // 10 % 3])
    for name, style in (("analytic-scalewise-4", ":"), ("network-scalewise-4", "--"), ("analytic-28", "-.")):
        if (out / f"{name}.json").exists():
            ax.axhline(json.loads((out / f"{name}.json").read_text())["final"]["fd"], ls=style, c="gray", lw=1)
            ax.text(0, json.loads((out / f"{name}.json").read_text())["final"]["fd"], name, fontsize=7, va="bottom")
    ax.set_yscale("log")
    ax.set_xlabel("generator step")
    ax.set_ylabel("exact FD (128 per class)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(out / "traces.png", dpi=110)


if __name__ == "__main__":
    main()
