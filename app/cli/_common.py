"""What the commands share: settings from flags, one flag per setting, the models `serve` and `predict`
load, and the error policy."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterable
from enum import Enum
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union, get_args, get_origin

if TYPE_CHECKING:  # the commands import what they need when they run: `mvit --help` stays fast
    from app.config import ServerSettings
    from app.repository.models_yaml import ModelEntry

Run = Callable[[argparse.Namespace], int]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# The settings that say how a model is loaded and run, for the commands that load one (predict, tune).
MODEL_LOADING_SETTINGS = (
    "backend",
    "device",
    "onnx_precision",
    "openvino_precision",
    "torch_precision",
    "onnx_optimization",
    "inference_threads",
)


class CommandError(Exception):
    """A failure a command expects (a missing package, a file it cannot read): one line, exit status 1."""


def one_line_errors(command: str, *expected: type[Exception]) -> Callable[[Run], Run]:
    """Every command's error policy: what it expects to fail (`expected`, CommandError, a file it cannot
    read or write, a model folder that is not one, an input the service would refuse) is printed as one
    line, `mvit COMMAND: what`, with exit status 1. Anything else is a bug, and keeps its traceback."""
    from app.errors import CheckpointError, ServiceError

    def wrap(run: Run) -> Run:
        @functools.wraps(run)
        def guarded(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except ServiceError as exc:
                message = exc.message
            except (CommandError, OSError, CheckpointError, *expected) as exc:
                message = str(exc)
            print(f"mvit {command}: {message}", file=sys.stderr)
            return 1

        return guarded

    return wrap


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """`ServerSettings` from the environment and the setting flags given; SystemExit in one line when invalid."""
    from pydantic import ValidationError

    from app.config import ServerSettings
    from app.errors import validation_problems

    overrides = {
        key: value
        for key, value in vars(args).items()
        if key in ServerSettings.model_fields and value is not None
    }
    try:
        return ServerSettings(**overrides)
    except ValidationError as exc:
        problems = validation_problems(exc.errors())
        raise SystemExit(f"mvit: invalid configuration: {problems}") from None


def tool_settings(args: argparse.Namespace) -> ServerSettings:
    """Settings for a tool command whose positional model arguments are not the served models."""
    return settings_from(argparse.Namespace(**{**vars(args), "models": None}))


def prepare_models(settings: ServerSettings) -> list[ModelEntry]:
    """Every configured model: its backend installed, fetched when it is a Hub id not fetched yet (pinned,
    verified, as `mvit fetch`), and its folder readable. Returns the models.yaml entries."""
    from app.backends import require_backend, verify_with_torch
    from app.repository import resolve
    from app.repository.models_yaml import served_models
    from app.repository.resolve import ensure_available

    entries = served_models(settings)
    for entry in entries:
        require_backend(entry.options(settings.model_options()).backend)
        ensure_available(entry.name, settings.model_repository, settings.hub_revision, verify_with_torch)
        resolve(entry.name, settings.model_repository)
    return entries


def metavar_of(kind: object) -> str:
    if get_origin(kind) is Literal:
        return "|".join(str(value) for value in get_args(kind))
    return (
        "N" if get_origin(kind) is Annotated or kind is int else getattr(kind, "__name__", str(kind)).upper()
    )


def add_setting_flags(parser: argparse._ActionsContainer, names: Iterable[str]) -> None:
    """One flag per setting, its help and choices taken from the setting's field (app/config.py)."""
    from pydantic_core import PydanticUndefined

    from app.config import ENVIRONMENT_ONLY, REPEATED_FLAGS, ServerSettings

    for name in names:
        if name in ENVIRONMENT_ONLY:
            continue
        field = ServerSettings.model_fields[name]
        annotation = field.annotation
        metavar = None
        if get_origin(annotation) in (Union, UnionType):
            kinds = [a for a in get_args(annotation) if a is not type(None)]
            if len(kinds) == 1:  # X | None
                annotation = kinds[0]
            else:  # e.g. N|auto: passed on as text, for the settings to validate
                annotation, metavar = str, "|".join(metavar_of(kind) for kind in kinds)
        help_text = (field.description or "").rstrip(".")
        if field.default is not PydanticUndefined and field.default not in (None, [], ""):
            default = field.default.value if isinstance(field.default, Enum) else field.default
            help_text += f" (default {default})"
        help_text += f"; env MVIT_{name.upper()}"
        flag = REPEATED_FLAGS.get(name, "--" + name.replace("_", "-"))
        options: dict[str, Any] = {"dest": name, "help": help_text.replace("%", "%%")}
        if metavar:
            options["metavar"] = metavar
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif get_origin(annotation) is list:
            options.update(action="append", metavar=name.removesuffix("s").upper())
        elif get_origin(annotation) is Literal:
            options.update(choices=list(get_args(annotation)), type=str.lower)  # `--log-level INFO` too
        else:
            options["type"] = annotation
        parser.add_argument(flag, **options)
