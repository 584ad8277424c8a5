"""`mvit convert`: an Apple ml-cvnets checkpoint into a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli._common import Subcommands, one_line_errors


def register(sub: Subcommands) -> None:
    convert = sub.add_parser(
        "convert", allow_abbrev=False, help="convert an Apple ml-cvnets checkpoint into a model folder"
    )
    convert.add_argument("checkpoint", help="cvnets .pt (loaded with weights_only=True) or .safetensors")
    convert.add_argument("directory", help="where to write the model folder, e.g. models/")
    convert.add_argument(
        "--image-size",
        type=int,
        help="model input size (default 256 classification, 512 segmentation, 320 detection)",
    )
    convert.add_argument(
        "--resample",
        choices=["bilinear", "bicubic"],
        help="resize filter (default: bilinear for detection/segmentation, as cvnets' predict; bicubic for classification)",
    )
    convert.set_defaults(func=run)


@one_line_errors("convert")
def run(args: argparse.Namespace) -> int:
    from app.tools.convert import convert_cvnets_checkpoint

    resample = {"bilinear": 2, "bicubic": 3}.get(args.resample or "")
    print(convert_cvnets_checkpoint(Path(args.checkpoint), Path(args.directory), args.image_size, resample))
    return 0
