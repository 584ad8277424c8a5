"""`mvit compare`: what a backend or precision costs in agreement with the reference backend, and in top-1
accuracy on a labelled folder of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli._common import CommandError, Subcommands, one_line_errors


def register(sub: Subcommands) -> None:
    from app.tools.compare import BACKENDS

    compare = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="compare a model's backends and precisions on a folder of images (agreement, accuracy)",
    )
    compare.add_argument(
        "model", metavar="MODEL", help="model folder (with model.onnx, optionally model.int8.onnx)"
    )
    compare.add_argument(
        "images", metavar="IMAGES", type=Path, help="folder of images, or of class subfolders of images"
    )
    compare.add_argument(
        "--backends",
        nargs="+",
        choices=list(BACKENDS),
        default=list(BACKENDS),
        metavar="BACKEND",
        help=f"what to compare (default all: {', '.join(BACKENDS)}); the first that loads is the reference",
    )
    compare.add_argument("--limit", type=int, help="at most this many images")
    compare.add_argument(
        "--profiles",
        default="trained,hf",
        help="preprocessing profiles to compare top-1 under (labelled classifier folders); '' for none",
    )
    compare.set_defaults(func=run)


@one_line_errors("compare")
def run(args: argparse.Namespace) -> int:
    from app.tools.compare import CompareError, compare

    profiles = [p for p in args.profiles.split(",") if p]
    try:
        compare(args.model, args.images, args.backends, args.limit, profiles)
    except CompareError as exc:
        raise CommandError(str(exc)) from None
    return 0
