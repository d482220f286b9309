"""`swd report`: tables and plots from evaluation JSONs and training logs.

Inputs are what the other commands wrote: one folder per evaluated run holding `metrics.json`
(`swd eval run --out DIR`), and optionally training logs (`log.jsonl` of `swd distill` runs).
The generated markdown goes between two marker lines of the target file, so hand-written text
around it (hardware, commands, caveats) survives a regeneration.
"""

from __future__ import annotations

import json
from pathlib import Path

from swd.errors import SwdError
from swd.train.validation import read_json

BEGIN, END = "<!-- swd report: begin -->", "<!-- swd report: end -->"


def markers(name: str = "") -> tuple[str, str]:
    """The begin / end lines of a named report block (one file can hold several)."""
    if not name:
        return BEGIN, END
    if not name.replace("-", "").replace("_", "").isalnum():
        raise SwdError(f"--name: letters, digits, - and _ only, got {name!r}")
    return f"<!-- swd report {name}: begin -->", f"<!-- swd report {name}: end -->"


def load_evals(folder: str | Path) -> list[dict]:
    """Every `*/metrics.json` under folder, labelled by its sub-folder name, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SwdError(f"--evals: {folder} is not a folder")
    rows = []
    for path in sorted(folder.glob("*/metrics.json")):
        data = _read_metrics(path)
        data["label"] = path.parent.name
        rows.append(data)
    if not rows:
        raise SwdError(f"--evals: no */metrics.json under {folder}")
    return rows


def _read_metrics(path: Path) -> dict:
    """One `swd eval run` metrics.json, with the fields the table and plots read checked up front."""
    data = read_json(path, "--evals")
    if not isinstance(data, dict):
        raise SwdError(f"--evals: {path} does not hold a JSON object (is it a `swd eval run` metrics.json?)")
    if not isinstance(data.get("metrics"), dict):
        raise SwdError(f"--evals: {path} has no 'metrics' object (is it a `swd eval run` metrics.json?)")
    seconds = data.get("sampling_seconds_per_image")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise SwdError(f"--evals: {path}: 'sampling_seconds_per_image' must be a number, got {seconds!r}")
    schedule = data.get("schedule")
    scales_ok = isinstance(schedule, dict) and isinstance(schedule.get("scales"), list) and schedule["scales"] and all(
        isinstance(s, (list, tuple)) and s for s in schedule["scales"])
    if schedule != "teacher" and not data.get("teacher_steps") and not scales_ok:
        raise SwdError(f"--evals: {path}: 'schedule' must be 'teacher' or an object with a list of scales")
    fd = data["metrics"].get("fd")
    if fd is not None and (isinstance(fd, bool) or not isinstance(fd, (int, float))):
        raise SwdError(f"--evals: {path}: 'metrics.fd' must be a number or null, got {fd!r}")
    flops = data.get("flops_per_image")
    if flops is not None and (isinstance(flops, bool) or not isinstance(flops, (int, float))):
        raise SwdError(f"--evals: {path}: 'flops_per_image' must be a number or null, got {flops!r}")
    return data


def _steps(row: dict) -> str:
    sched = row.get("schedule")
    if sched == "teacher" or row.get("teacher_steps"):
        return f"{row.get('teacher_steps')} + CFG {row.get('guidance')}"
    scales = [s[0] for s in sched["scales"]]
    kind = "scale-wise" if len(set(scales)) > 1 else "full-res"
    return f"{len(scales)} {kind} ({'->'.join(map(str, scales))})"


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _gflops(row: dict) -> str:
    flops = row.get("flops_per_image")
    return "-" if flops is None else f"{flops / 1e9:.2f}"


def _latency(row: dict) -> str:
    device = str(row.get("device", "cpu")).split(":")[0]
    return f"{row['sampling_seconds_per_image'] * 1000:.1f} ({device})"


def metrics_table(rows: list[dict]) -> str:
    head = ("| run | steps | GFLOPs / image | ms / image (device) | FD (evaluator) | precision | recall | text align "
            "| lap-SWD x1e3 |" + (" shapes acc |" if any("shapes" in r["metrics"] for r in rows) else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m = r["metrics"]
        cells = [r["label"], _steps(r), _gflops(r), _latency(r), _fmt(m.get("fd"), 2),
                 _fmt(m.get("precision")), _fmt(m.get("recall")),
                 f"{_fmt(m.get('text_alignment'))} (real {_fmt(m.get('text_alignment_real'))})", _fmt(m.get("lap_swd"), 2)]
        if "shapes" in m:
            shapes = m["shapes"]
            cells.append(_fmt(shapes.get("accuracy") if isinstance(shapes, dict) else shapes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_quality_vs_cost(rows: list[dict], path: Path) -> Path:
    """FD against sampling time (and against transformer FLOPs when the evals counted them)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["metrics"].get("fd") is not None]
    with_flops = [r for r in rows if r.get("flops_per_image")]
    panels = [("ms", "sampling time per image (ms, log)", rows)]
    if with_flops:
        panels.append(("gflops", "transformer GFLOPs per image (log)", with_flops))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    markers_ = "os^Dv<>pPX*h"
    style = {r["label"]: (f"C{i % 10}", markers_[i % len(markers_)]) for i, r in enumerate(rows)}  # same in both panels
    for ax, (kind, xlabel, subset) in zip(axes[0], panels):
        for r in subset:
            x = r["sampling_seconds_per_image"] * 1000 if kind == "ms" else r["flops_per_image"] / 1e9
            color, marker = style[r["label"]]
            ax.scatter([x], [r["metrics"]["fd"]], color=color, marker=marker, s=36, label=r["label"])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # log minor labels collide
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FD in the evaluator's feature space (lower is better)")
        ax.grid(alpha=0.3)
    # One legend beside the panels: labels next to clustered points would overlap.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    devices = sorted({str(r.get("device", "cpu")).split(":")[0] for r in rows})
    fig.suptitle(f"Quality against cost ({', '.join(devices)} timings)", fontsize=10)
    return _save(fig, path)


def plot_sample_strips(rows: list[dict], folder: Path, path: Path) -> Path | None:
    """One row of the same held-out prompts per run (the `strip.png` each eval wrote), labelled;
    None when no eval has a strip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    strips = [(r["label"], folder / r["label"] / "strip.png") for r in rows]
    strips = [(label, np.asarray(Image.open(f).convert("RGB"))) for label, f in strips if f.is_file()]
    if not strips:
        return None
    h, w = strips[0][1].shape[:2]
    fig, axes = plt.subplots(len(strips), 1, figsize=(w / 64 * 1.1 + 2.2, len(strips) * (h / 64) * 1.15), squeeze=False)
    for ax, (label, image) in zip(axes[:, 0], strips):
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps a legend placed outside the axes
    plt.close(fig)
    return path


def _records(log: Path) -> list[dict]:
    """The JSON lines of a training log; a last line cut off by a killed run is skipped."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise SwdError(f"--logs: {log} line {number} is not JSON") from None
    return records


def plot_training_curves(logs: dict[str, Path], path: Path, keys=("mmd", "dmd", "fake")) -> Path:
    """One panel per loss key; one line per run and scale (x = generator step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {label: _records(log) for label, log in logs.items()}
    keys = [k for k in keys if any(k in r for recs in records.values() for r in recs)]
    if not keys:
        raise SwdError("--logs: none of the logs has mmd, dmd or fake losses")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, recs in records.items():
            # Losses differ by scale (round robin), so each scale gets its own line.
            for scale in sorted({r.get("scale") for r in recs if key in r}, key=lambda v: (v is None, v)):
                pts = [(r["step"], r[key]) for r in recs if key in r and r.get("scale") == scale]
                if pts:
                    ax.plot(*zip(*pts), label=f"{label} @{scale}px" if scale else label, lw=1, marker=".", ms=3)
        ax.set_title(f"{key} loss")
        ax.set_xlabel("generator step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def eval_curves(logs: dict[str, Path]) -> dict[str, list[tuple[int, dict]]]:
    """The in-training evaluations (`train.eval_every`) of each log: [(step, metrics)], by step."""
    curves = {}
    for label, log in logs.items():
        # A resumed run may evaluate a step twice (killed between an evaluation and the next
        # checkpoint): the last record of a step wins.
        points = sorted({r["step"]: r["eval"] for r in _records(log) if "eval" in r}.items())
        if points:
            curves[label] = points
    return curves


def plot_eval_curves(curves: dict[str, list[tuple[int, dict]]], path: Path, keys=("fd", "precision", "recall")) -> Path:
    """FD (and precision, recall) on held-out prompts against the generator step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "shapes" not in keys:
        keys = (*keys, "shapes")  # the exact scorer's accuracy, when the runs were scored on shapes prompts
    keys = [k for k in keys if any(m.get(k) is not None for points in curves.values() for _, m in points)]
    if not keys:
        raise SwdError("--logs: the in-training evaluations hold none of fd, precision, recall, shapes")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, points in curves.items():
            pts = [(step, m[key]) for step, m in points if m.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=label, marker="o", ms=3, lw=1.2)
        ax.set_title({"fd": "held-out FD (lower is better)", "shapes": "shapes accuracy"}.get(key, key))
        ax.set_xlabel("generator step")
        ax.grid(alpha=0.3)
    # One legend beside the panels: inside them it would cover the lines.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return _save(fig, path)


def eval_curve_table(curves: dict[str, list[tuple[int, dict]]]) -> str:
    """FD at each evaluated step, one row per run (with the shapes accuracy in brackets when scored)."""
    steps = sorted({step for points in curves.values() for step, _ in points})
    shapes = any("shapes" in m for points in curves.values() for _, m in points)
    title = "FD (shapes accuracy) at step" if shapes else "FD at step"
    lines = [f"| run ({title}) | " + " | ".join(map(str, steps)) + " |", "|" + "---|" * (len(steps) + 1)]

    def cell(m):
        if m is None:
            return "-"
        return _fmt(m.get("fd"), 1) + (f" ({_fmt(m['shapes'], 2)})" if m.get("shapes") is not None else "")

    for label, points in curves.items():
        by_step = dict(points)
        lines.append(f"| {label} | " + " | ".join(cell(by_step.get(s)) for s in steps) + " |")
    return "\n".join(lines)


def write_between_markers(target: Path, body: str, name: str = "") -> None:
    begin, end_line = markers(name)
    text = target.read_text() if target.exists() else ""
    block = f"{begin}\n{body.rstrip()}\n{end_line}"
    if begin in text and end_line in text:
        start, end = text.index(begin), text.index(end_line) + len(end_line)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    target.write_text(text)


def build_report(evals: str | Path, out: str | Path, logs: list[str] | None = None, plots: str | Path | None = None,
                 name: str = "") -> str:
    """The table and plots of `evals` (and `logs`) between the markers of block `name` in `out`;
    a named block prefixes its plot files with the name."""
    markers(name)  # validates the name before anything is written
    prefix = f"{name}_" if name else ""
    rows = load_evals(evals)
    base = Path(out).parent
    plots = Path(plots) if plots else base / "results"
    body = [metrics_table(rows), ""]
    qpath = plot_quality_vs_cost(rows, plots / f"{prefix}quality_vs_latency.png")
    body.append(f"![quality against cost]({_rel(qpath, base)})")
    spath = plot_sample_strips(rows, Path(evals), plots / f"{prefix}samples.png")
    if spath is not None:
        body += ["", "The first eight held-out prompts of each run (same prompts and seed in every row):", "",
                 f"![samples side by side]({_rel(spath, base)})"]
    if logs:
        named = {}
        for item in logs:
            label, _, path = item.partition("=")
            path = Path(path or label)
            if not path.is_file():
                raise SwdError(f"--logs: {path} does not exist")
            named[label if _ else path.parent.name] = path
        curves = eval_curves(named)
        if curves:
            fpath = plot_eval_curves(curves, plots / f"{prefix}fd_vs_step.png")
            sizes = sorted({m.get("n_fake") for points in curves.values() for _, m in points} - {None})
            body += ["", f"In-training evaluations (`train.eval_every`, {'/'.join(map(str, sizes))} held-out images "
                     "each, one fixed seed): FD from fewer images is biased upwards, so compare these values with "
                     "each other, not with the table above.", "",
                     eval_curve_table(curves), "", f"![FD against training step]({_rel(fpath, base)})"]
        cpath = plot_training_curves(named, plots / f"{prefix}training_curves.png")
        body += ["", f"![training curves]({_rel(cpath, base)})"]
    text = "\n".join(body)
    write_between_markers(Path(out), text, name)
    return text


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
