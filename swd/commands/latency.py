"""`swd bench latency`: time sampling runs of a testbed model or of a random-weight real-size model."""

from __future__ import annotations

import argparse
import json
import sys

from swd.errors import SwdError
from swd.train.validation import arg_finite, arg_int_at_least, check_device

REAL_ARCHS = ("sd35-large", "sd35-medium", "flux-dev")
HELP = "time sampling: teacher vs full-resolution few-step vs SwD (median of repeats)"


def _cmd_latency(args) -> int:
    import torch

    from swd.eval.latency import bench_sampling, format_rows, random_condition, rows_to_dicts
    from swd.models import adapter_for
    from swd.models.configs import get_arch
    from swd.schedules import resolve_schedule
    from swd.runtime import pick_device

    if (args.arch is None) == (args.model is None):
        raise SwdError("give exactly one of --arch (random weights of a real config) or --model (a saved testbed model)")
    check_device(args.device, "--device")
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
        cond, uncond = random_condition(arch.text_tokens, t.joint_attention_dim, t.pooled_projection_dim,
                                        args.batch, device, dtype)
        cfg = args.teacher_cfg if args.teacher_cfg is not None else arch.teacher_cfg
        title = f"{arch.name}, batch {args.batch}, {args.dtype}, transformer only, {'CUDA graphs' if args.graphs and device.type == 'cuda' else 'eager'}"
    else:
        from swd.demo import encode_prompts, load_model

        model, saved = load_model(args.model)  # checks the folder: pixel-space SD3, safetensors
        # nn.Module.to: diffusers' own .to warns about fp32-kept modules (SD3 has none).
        model = torch.nn.Module.to(model, device, dtype)
        adapter = adapter_for(model)
        names = args.schedules.split(",") if args.schedules else (["saved"] if saved is not None else ["testbed-4"])
        schedules = [saved if n == "saved" else resolve_schedule(n) for n in names if n]
        cond, uncond = encode_prompts(["noto style: banana"] * args.batch)
        cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)
        cfg = args.teacher_cfg if args.teacher_cfg is not None else 4.5
        title = f"testbed model {args.model}, batch {args.batch}, {args.dtype}, on {device}"
    for s in schedules:
        s.check_model(adapter.patch_size, adapter.max_latent_size)
    rows = bench_sampling(adapter, cond, uncond, schedules, device, dtype, teacher_steps=args.teacher_steps,
                          teacher_cfg=cfg, graphs=args.graphs, warmup=args.warmup, repeats=args.repeats)
    if args.json:
        print(json.dumps({"title": title, "device": str(device),
                          "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "rows": rows_to_dicts(rows)}, indent=2))
    else:
        print(format_rows(rows, title))
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of `swd bench latency` (listed by `swd.commands.bench`)."""
    p.add_argument("--arch", default=None, help=f"random-weight real config: {', '.join(REAL_ARCHS)} (GPU)")
    p.add_argument("--model", default=None, help="saved testbed model folder (CPU or GPU)")
    p.add_argument("--schedules", default=None, help="comma-separated presets/files (default: the arch's or model's)")
    p.add_argument("--batch", type=arg_int_at_least(1), default=1)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher-steps", type=arg_int_at_least(0), default=28, help="0 skips the teacher")
    p.add_argument("--teacher-cfg", type=arg_finite(0.0), default=None, help="teacher guidance (default: the arch's)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="one CUDA graph per latent size (GPU only)")
    p.add_argument("--warmup", type=arg_int_at_least(0), default=2)
    p.add_argument("--repeats", type=arg_int_at_least(1), default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_latency)
