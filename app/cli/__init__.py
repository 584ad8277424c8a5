"""`mvit`: serve, fetch, demo-models, convert, export, predict, tune, compare; one module per command,
each with `register(subparsers)` and `run(args)`, and the error policy they share in `_common`."""

from __future__ import annotations

import argparse
import difflib
import sys

from app.cli import compare, convert, demo_models, export, fetch, predict, serve, tune

COMMANDS = (serve, demo_models, convert, fetch, export, predict, tune, compare)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviated flags: `--api-tokens X` must not quietly become `--api-tokens-file X`.
    parser = argparse.ArgumentParser(
        prog="mvit", description="MobileViTv2 inference service", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(command_parser=command_parser)  # for usage errors found after parsing
    return parser


def unrecognized(extras: list[str], command_parser: argparse.ArgumentParser) -> str:
    """argparse's message for arguments a command does not take, with the nearest flag for each typo."""
    flags = [flag for action in command_parser._actions for flag in action.option_strings]
    hints = []
    for extra in extras:
        name = extra.split("=", 1)[0]
        near = difflib.get_close_matches(name, flags, n=1, cutoff=0.6) if name.startswith("-") else []
        if near:
            hints.append(f"{name}: did you mean {near[0]}?")
    return f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, extras = build_parser().parse_known_args(argv)
    if extras:  # the command's usage, not the top-level one
        args.command_parser.error(unrecognized(extras, args.command_parser))
    args.argv = argv
    return int(args.func(args))
