"""`swd app`: serve the local comparison page of `swd.app` (teacher vs SwD student on a prompt)."""

from __future__ import annotations

import os

from swd.app import ModelCache, build_app, compare, launch, one_line
from swd.errors import SwdError


def register(subparsers) -> None:
    p = subparsers.add_parser("app", help="local web page: teacher vs SwD student on your prompt (needs the app extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model", default=None, help="SwD student folder (config.json + schedule.yaml); "
                   "default: the shipped shapes UNet student")
    p.add_argument("--teacher", default=None, help="teacher folder; default: the one the student's "
                   "distill-config.yaml names, else the shipped shapes UNet teacher")
    p.set_defaults(func=_cmd_app)


def _cmd_app(args) -> int:
    from swd.train.validation import check_int

    check_int(args.port, "--port", 1, 65535)
    if not args.host.strip():
        raise SwdError("--host: give an address to bind to, e.g. 127.0.0.1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise SwdError("the app needs gradio: pip install 'swd-diffusion[app]' (or pip install 'gradio>=4')") from None
    cache = ModelCache(args.model, args.teacher)
    try:
        models = cache.get()
        print(f"models: teacher {models.teacher_dir}, student {models.student_dir} "
              f"({models.schedule.steps} steps); warming up")
        compare(models, "a red circle", n=1, teacher_steps=2)  # first-call set-up out of the timings
    except SwdError as err:
        print(f"swd app: warning: {one_line(err)} (the page shows this too)")
    page = build_app(cache)
    print(f"swd app: serving on http://{args.host}:{args.port} (Ctrl-C stops)")
    try:
        launch(page, args.host, args.port, quiet=True)
    except OSError as err:
        raise SwdError(f"--port: cannot serve on {args.host}:{args.port} ({one_line(err)})") from None
    return 0
