"""`mvit fetch`: pretrained models into the model repository, verified, and listed in its models.yaml."""

from __future__ import annotations

import argparse
import sys

from app.cli._common import CommandError, Subcommands, add_setting_flags, one_line_errors, tool_settings


def register(sub: Subcommands) -> None:
    fetch = sub.add_parser(
        "fetch",
        allow_abbrev=False,
        help="download pretrained models into the model repository (verified, atomic)",
    )
    fetch.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="Hub ids or ml-cvnets names, e.g. mobilevitv2-0.5-imagenet1k-256, mobilevitv2-1.0-imagenet1k-384, "
        "coco-ssd-mobilevitv2-0.75, deeplabv3-mobilevitv2-1.0-ade20k (default: the 1.0 classifier, "
        "VOC segmenter and COCO detector, also spelled `default`)",
    )
    add_setting_flags(fetch, ("model_repository", "hub_revision"))
    fetch.add_argument(
        "--no-register", action="store_true", help="do not add the fetched models to models.yaml"
    )
    fetch.set_defaults(func=run)


@one_line_errors("fetch")
def run(args: argparse.Namespace) -> int:
    from app.repository.models_yaml import REPOSITORY_FILE, add_to_repository_file
    from app.tools.fetch import DEFAULT_MODELS, fetch

    settings = tool_settings(args)
    repository = settings.model_repository
    names = [
        n for name in args.names or ["default"] for n in (DEFAULT_MODELS if name == "default" else [name])
    ]
    fetched: list[str] = []
    try:
        for name in names:
            path = fetch(name, repository, settings.hub_revision)
            print(path)
            fetched.append(name if "/" in name else path.name)
    except ImportError as exc:
        raise CommandError(
            f"needs the full install ({exc.name} is missing): `pip install .[export]`"
        ) from None
    if not args.no_register:
        added = add_to_repository_file(repository / REPOSITORY_FILE, fetched)
        if added:
            print(f"{repository / REPOSITORY_FILE}: now serves {', '.join(added)}", file=sys.stderr)
    return 0
