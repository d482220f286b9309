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
import zipfile
from pathlib import Path

from swd.errors import SwdError
from swd.train.validation import check_output_file, check_output_folder, check_seed

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

    register_encode_prompts(commands)  # precomputed SD3/FLUX prompt embeddings for distillation


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def build_command(args: argparse.Namespace) -> int:
    """Build one dataset and print where it went and what it holds."""
    if args.out is not None:
        out = Path(args.out)
        if out.suffix == ".npz":
            check_output_file(out, "--out", (".npz",))
        else:
            check_output_folder(out, "--out")
    if args.seed is not None and args.name == "shapes":
        check_seed(args.seed, "--seed")
    if args.name == "emoji":
        from swd.data.emoji import build_emoji

        if args.seed is not None:
            raise SwdError("--seed: the emoji set is rendered deterministically and takes no seed")
        if args.n is not None and args.n < 1:
            raise SwdError(f"--n: must be a positive number of concepts, got {args.n}")
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

    if path.is_dir():
        raise SwdError(f"name: {path} is a folder, not a dataset .npz file")
    if not path.is_file():
        raise SwdError(f"name: no dataset at {path}; build it with `swd data build`")
    try:
        summary = read_manifest(path)["summary"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        # np.load of a torn or foreign file fails in many ways; none is a bug of ours
        raise SwdError(f"name: {path} is not a readable swd dataset ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:160] if str(err) else 'no detail'})") from None
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    for key, value in summary.items():
        print(f"  {key}: {json.dumps(value, ensure_ascii=False)}")
    return 0


def register_encode_prompts(commands) -> None:
    """Add `encode-prompts` under `swd data`."""
    from swd.data.prompts import DTYPES

    p = commands.add_parser("encode-prompts", help="precompute SD3/FLUX prompt embeddings of a captioned image set")
    p.add_argument("--pipeline", required=True, help="local diffusers SD3/SD3.5 or FLUX pipeline folder")
    p.add_argument("--images", required=True,
                   help="folder of images (sorted by name) or a .npy/.npz uint8 (N, H, W, 3)")
    p.add_argument("--captions", required=True, help=".txt (one line per image, in order) or .jsonl {file, caption}")
    p.add_argument("--out", required=True, help="output .safetensors file, or a folder for shards")
    p.add_argument("--heldout-captions", default=None, help=".txt of prompts for the trainer's sample grids")
    p.add_argument("--size", type=int, default=None, help="center-crop and resize every image to SIZE x SIZE")
    p.add_argument("--max-sequence-length", type=int, default=None, help="T5 tokens (SD3 default 256, FLUX 512)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="stored embedding dtype")
    p.add_argument("--shard-rows", type=int, default=0, help="rows per shard when --out is a folder (0: one shard)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=encode_prompts_command)


def encode_prompts_command(args: argparse.Namespace) -> int:
    """`swd data encode-prompts`: run a pipeline's text encoders once over a captioned image set."""
    import torch

    from swd.data.prompts import (ImageSource, PipelineTextEncoder, encode_prompt_dataset, load_prompt_embeddings,
                                  read_captions)
    from swd.runtime import pick_device

    images = ImageSource(args.images, args.size)
    captions = read_captions(args.captions, images.names)
    heldout = [c for c in Path(args.heldout_captions).read_text(encoding="utf-8").splitlines() if c.strip()] \
        if args.heldout_captions else []
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    encoder = PipelineTextEncoder.from_folder(args.pipeline, device, dtype, args.max_sequence_length)
    try:
        files = encode_prompt_dataset(
            args.out, images, captions, encoder, encoder.family, heldout, batch_size=args.batch_size,
            dtype=args.dtype, shard_rows=args.shard_rows,
            meta={"pipeline": Path(args.pipeline).name, "max_sequence_length": encoder.max_sequence_length})
    finally:
        encoder.close()
    data = load_prompt_embeddings(args.out)
    print(f"wrote {len(files)} file(s) under {args.out}: {len(data.train_images)} images "
          f"{tuple(data.train_images.shape[-2:])}, prompt_embeds (L={data.text_tokens}, D={data.joint_dim}), "
          f"pooled {data.pooled_dim}, {len(heldout)} held-out prompts ({encoder.family})")
    return 0
