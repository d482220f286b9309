"""`swd schedules`: list the scale-schedule presets (and the authors' checkpoint each samples)."""

from __future__ import annotations

import json


def _cmd_schedules(args) -> int:
    from swd.schedules import CHECKPOINTS, PRESETS

    rows = []
    for name, sched in PRESETS.items():
        rows.append({
            **sched.to_dict(),
            "steps": sched.steps,
            "relative_cost": round(sched.relative_cost(patch_size=2), 4),
            "checkpoint": CHECKPOINTS.get(name),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<20} {'steps':>5}  {'scales (latent side)':<26} {'sigmas':<44} {'cost':>5}  checkpoint")
    for r in rows:
        # An image scale prints as its side (or hxw); a video scale as framesxhxw.
        scales = ", ".join(str(s[0]) if len(s) == 2 and s[0] == s[1] else "x".join(map(str, s)) for s in r["scales"])
        sigmas = ", ".join(f"{s:.4f}" for s in r["sigmas"])
        checkpoint = r["checkpoint"] or "-"
        print(f"{r['name']:<20} {r['steps']:>5}  {scales:<26} {sigmas:<44} {r['relative_cost']:>5.2f}  {checkpoint}")
    print("cost: image tokens of all steps over one full-resolution step's (patch 2; video: 1x2x2).")
    print("checkpoint: the authors' published student (Hub id) the preset samples (sdxl-4: sigma = DDPM timestep / 1000).")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("schedules", help="list the scale-schedule presets")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_schedules)
