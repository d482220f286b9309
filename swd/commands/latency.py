"""`swd bench latency`: time sampling runs of a testbed model or of a random-weight real-size model."""

from __future__ import annotations

import argparse
import json
import os
import sys

from swd.errors import SwdError
from swd.train.validation import arg_finite, arg_int_at_least, check_device

REAL_ARCHS = ("sd35-large", "sd35-medium", "flux-dev")
HELP = ("time sampling: teacher vs full-resolution few-step vs SwD (median of repeats); "
        "eager and compiled, batch sizes and thread counts side by side")
MODES = ("eager", "compiled")


def parse_batches(text: str) -> list[int]:
    """'1,16' -> [1, 16]: the batch sizes to time (one sampling run = one batch)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise SwdError(f"--batch: expected positive integers separated by commas (e.g. 1,16), got {text!r}")
    return list(dict.fromkeys(values))


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_threads(text: str | None) -> list[int]:
    """'1,all' -> [1, cores]; None -> [the current torch setting]."""
    import torch

    if text is None:
        return [torch.get_num_threads()]
    values = []
    for item in str(text).split(","):
        item = item.strip()
        if item == "all":
            values.append(available_cores())
        elif item.isdigit() and int(item) >= 1:
            values.append(int(item))
        else:
            raise SwdError(f"--threads: expected positive integers or 'all' separated by commas, got {text!r}")
    return list(dict.fromkeys(values))


def parse_modes(text: str, compile_flag: bool) -> list[str]:
    modes = [m.strip() for m in str(text).split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SwdError(f"--modes: expected {' and/or '.join(MODES)} separated by commas, got {text!r}")
    if compile_flag:
        modes = [m for m in modes if m != "eager"] or ["compiled"]
    return list(dict.fromkeys(modes))


def _cmd_latency(args) -> int:
    import torch

    from swd.eval.latency import bench_settings, format_rows, random_condition, rows_to_dicts
    from swd.models import adapter_for
    from swd.models.configs import get_arch
    from swd.schedules import resolve_schedule
    from swd.runtime import pick_device

    if (args.arch is None) == (args.model is None):
        raise SwdError("give exactly one of --arch (random weights of a real config) or --model (a saved testbed model)")
    check_device(args.device, "--device")
    batches = parse_batches(args.batch)
    threads = parse_threads(args.threads)
    modes = parse_modes(args.modes, args.compile)
    device = pick_device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.arch is not None:
        arch = get_arch(args.arch)
        if arch.name in REAL_ARCHS and device.type != "cuda":
            raise SwdError(f"--arch {arch.name}: real-size latency needs a CUDA GPU (its weights do not fit a CPU run); "
                           "use --model for a testbed model")
        names = args.schedules.split(",") if args.schedules else [arch.default_schedule]
        schedules = [resolve_schedule(n) for n in names if n]
        print(f"swd: building {arch.name} with random weights on {device} ({args.dtype})...", file=sys.stderr, flush=True)
        torch.manual_seed(0)
        model = arch.build(device=device, dtype=dtype).eval()
        adapter = adapter_for(model)
        t = model.config

        def conditions(batch):
            return random_condition(arch.text_tokens, t.joint_attention_dim, t.pooled_projection_dim, batch, device,
                                    dtype)

        cfg = args.teacher_cfg if args.teacher_cfg is not None else arch.teacher_cfg
        title = f"{arch.name}, {args.dtype}, transformer only, on {device}"
    else:
        from swd.demo import encode_prompts, load_with_schedule

        model, saved = load_with_schedule(args.model)  # checks the folder: pixel-space SD3 or UNet, safetensors
        # nn.Module.to: diffusers' own .to warns about fp32-kept modules (SD3 has none).
        model = torch.nn.Module.to(model, device, dtype)
        adapter = adapter_for(model)
        names = args.schedules.split(",") if args.schedules else (["saved"] if saved is not None else ["testbed-4"])
        schedules = [saved if n == "saved" else resolve_schedule(n) for n in names if n]
        cond1, uncond1 = encode_prompts(["a cross"])

        def conditions(batch):
            return cond1.repeat(batch).to(device, dtype), uncond1.repeat(batch).to(device, dtype)

        cfg = args.teacher_cfg if args.teacher_cfg is not None else 4.5
        title = f"testbed model {args.model}, {args.dtype}, on {device}"
    for s in schedules:
        s.check_model(adapter.patch_size, adapter.max_latent_size)
    rows = bench_settings(adapter, conditions, schedules, device, dtype, batches=batches, threads=threads, modes=modes,
                          teacher_steps=args.teacher_steps, teacher_cfg=cfg, warmup=args.warmup, repeats=args.repeats)
    if args.json:
        print(json.dumps({"title": title, "device": str(device),
                          "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "cores": available_cores(), "torch": torch.__version__,
                          "rows": rows_to_dicts(rows)}, indent=2))
    else:
        print(format_rows(rows, title))
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of `swd bench latency` (listed by `swd.commands.bench`)."""
    p.add_argument("--arch", default=None, help=f"random-weight real config: {', '.join(REAL_ARCHS)} (GPU)")
    p.add_argument("--model", default=None, help="saved testbed model folder (CPU or GPU)")
    p.add_argument("--schedules", default=None, help="comma-separated presets/files (default: the arch's or model's)")
    p.add_argument("--batch", default="1", metavar="N[,N...]",
                   help="images per sampling run; several (e.g. 1,16: latency and a throughput batch) are timed in turn")
    p.add_argument("--threads", default=None, metavar="N|all[,...]",
                   help="torch intra-op threads, e.g. 1,all (default: the current setting)")
    p.add_argument("--modes", default="eager", metavar="eager,compiled",
                   help="eager and/or compiled (torch.compile, one static graph per scale; compile time reported apart)")
    p.add_argument("--compile", action="store_true", help="time the compiled path only (= --modes compiled)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher-steps", type=arg_int_at_least(0), default=28, help="0 skips the teacher")
    p.add_argument("--teacher-cfg", type=arg_finite(0.0), default=None, help="teacher guidance (default: the arch's)")
    p.add_argument("--warmup", type=arg_int_at_least(0), default=2)
    p.add_argument("--repeats", type=arg_int_at_least(1), default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_latency)
