"""`swd report`: the results table and plots from eval JSONs and training logs (`swd.eval.report`)."""

from __future__ import annotations

from swd.eval.report import build_report


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="results table and plots from eval JSONs and training logs")
    p.add_argument("--evals", required=True, help="folder with one sub-folder (named by run) per metrics.json")
    p.add_argument("--out", default="docs/RESULTS.md", help="markdown file; the block between its report markers is replaced")
    p.add_argument("--logs", nargs="*", default=[], metavar="LABEL=LOG", help="training log.jsonl files to plot")
    p.add_argument("--plots", default=None, help="folder for the PNG plots (default: docs/results)")
    p.add_argument("--name", default="", help="report block name, for several tables in one file (e.g. shapes)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    text = build_report(args.evals, args.out, args.logs, args.plots, args.name)
    print(text)
    print(f"\nwritten between the report markers of {args.out}")
    return 0
