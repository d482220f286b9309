"""`swd data ...`: build the offline datasets and describe built ones.

    swd data build emoji [--out DIR] [--n CONCEPTS]
    swd data build shapes [--out DIR] [--seed N] [--n SAMPLES]
    swd data info emoji|shapes|FILE.npz [--seed N] [--n N]
    swd data encode-prompts --pipeline DIR --images DIR_OR_NPY --captions FILE --out FILE_OR_DIR

`register(subparsers)` adds the `data` command to the project's argparse CLI; every parser sets
`func(args) -> int`, and user mistakes surface as `SwdError` for the CLI to print.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from swd.errors import SwdError

DATASETS = ("emoji", "shapes")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data build` and `data info` to the CLI's subcommands."""
    data = subparsers.add_parser("data", help="build or describe the offline datasets (emoji, shapes)")
    data.set_defaults(func=lambda args: _usage(data))
    commands = data.add_subparsers(dest="data_command", metavar="{build,info,encode-prompts}")

    build = commands.add_parser("build", help="render a dataset into the cache (or --out)")
    build.add_argument("name", choices=DATASETS)
    build.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory or .npz file (default: $SWD_CACHE or .cache/swd)",
    )
    build.add_argument("--seed", type=int, default=None, help="shapes only: the scene seed (default 0)")
    build.add_argument(
        "--n",
        type=int,
        default=None,
        help="shapes: number of samples (default 6000); emoji: first N concepts only",
    )
    build.set_defaults(func=build_command)

    info = commands.add_parser("info", help="print a built dataset's summary")
    info.add_argument("name", help="emoji, shapes, or a dataset .npz file")
    info.add_argument("--seed", type=int, default=0, help="shapes: which built set (default 0)")
    info.add_argument("--n", type=int, default=None, help="shapes: which built set (default 6000)")
    info.set_defaults(func=info_command)

    from swd.data.prompts import register as register_encode_prompts

    register_encode_prompts(commands)  # precomputed SD3/FLUX prompt embeddings for distillation


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def build_command(args: argparse.Namespace) -> int:
    """Build one dataset and print where it went and what it holds."""
    if args.name == "emoji":
        from swd.data.emoji import build_emoji

        if args.seed is not None:
            raise SwdError("--seed: the emoji set is rendered deterministically and takes no seed")
        path = build_emoji(args.out, limit=args.n)
    else:
        from swd.data.shapes import DEFAULT_N, build_shapes

        path = build_shapes(args.out, n=DEFAULT_N if args.n is None else args.n, seed=args.seed or 0)
    print(f"wrote {path}")
    return _print_summary(path)


def info_command(args: argparse.Namespace) -> int:
    """Print a built dataset's summary (sources, licenses, counts, split)."""
    return _print_summary(_locate(args))


def _locate(args: argparse.Namespace) -> Path:
    from swd.data import default_cache_dir

    if args.name == "emoji":
        from swd.data.emoji import FILE_NAME

        return default_cache_dir() / FILE_NAME
    if args.name == "shapes":
        from swd.data.shapes import DEFAULT_N, FILE_PATTERN

        return default_cache_dir() / FILE_PATTERN.format(
            seed=args.seed, n=DEFAULT_N if args.n is None else args.n
        )
    path = Path(args.name)
    if path.suffix != ".npz":
        raise SwdError(f"name: expected emoji, shapes or a .npz file, got {args.name!r}")
    return path


def _print_summary(path: Path) -> int:
    from swd.data import read_manifest

    if not path.is_file():
        raise SwdError(f"name: no dataset at {path}; build it with `swd data build`")
    summary = read_manifest(path)["summary"]
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    for key, value in summary.items():
        print(f"  {key}: {json.dumps(value, ensure_ascii=False)}")
    return 0
