"""`mvit demo-models`: models of the real architecture with seeded random weights, for offline demos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli._common import Subcommands, one_line_errors


def register(sub: Subcommands) -> None:
    from app.tasks import TASK_BY_CLI_NAME

    demo = sub.add_parser(
        "demo-models",
        allow_abbrev=False,
        help="write random-weight models of the real architecture (offline)",
    )
    demo.add_argument("directory", help="where to write the model folders, e.g. models/")
    demo.add_argument(
        "--width", type=float, action="append", help="width multiplier, 0.5 to 2.0 (repeatable)"
    )
    demo.add_argument(
        "--image-size",
        type=int,
        action="append",
        help="input size, a multiple of 32 (default 256 / 512 / 320)",
    )
    demo.add_argument(
        "--task",
        choices=sorted(TASK_BY_CLI_NAME),
        action="append",
        help="classification, segmentation or detection (repeatable; default: all three)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--no-register",
        action="store_true",
        help="do not add the models to DIRECTORY/models.yaml (which `mvit serve` serves)",
    )
    demo.set_defaults(func=run)


@one_line_errors("demo-models", ValueError)  # ValueError: an image size that is no multiple of 32
def run(args: argparse.Namespace) -> int:
    from app.repository.models_yaml import REPOSITORY_FILE, add_to_repository_file
    from app.tasks import TASK_BY_CLI_NAME
    from app.tools.demo_models import write_demo_model

    directory = Path(args.directory)
    written: list[str] = []
    for task in args.task or TASK_BY_CLI_NAME:  # by default one model of each task
        for width in args.width or [0.5]:
            for size in args.image_size or [None]:
                path = write_demo_model(directory, TASK_BY_CLI_NAME[task].name, width, size, args.seed)
                print(path)
                written.append(path.name)
    if not args.no_register:
        added = add_to_repository_file(directory / REPOSITORY_FILE, written)
        if added:
            print(f"{directory / REPOSITORY_FILE}: now serves {', '.join(added)}", file=sys.stderr)
    return 0
