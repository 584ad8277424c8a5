"""Configuration is stated once (app/config.py): the CLI flags, models.yaml entries and docs follow it."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from app.cli import build_parser
from app.config import ENVIRONMENT_ONLY, PER_MODEL_OPTIONS, REPEATED_FLAGS, ModelOptions, ServerSettings
from app.repository.models_yaml import ModelEntry
from tests.support import ROOT

# How `mvit serve --ray` runs the service (app/ray_serve.RayOptions), not settings of the service itself.
RAY_FLAGS = {"ray", "replicas", "ray_cpus", "ray_address"}


def serve_flags() -> dict[str, str]:
    """dest -> help of every `mvit serve` option that is a setting."""
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return {
        action.dest: action.help or "" for action in serve._actions if action.dest not in {"help", *RAY_FLAGS}
    }


def test_every_setting_but_the_secret_ones_is_a_serve_flag_with_its_description() -> None:
    flags = serve_flags()
    assert set(flags) == set(ServerSettings.model_fields) - ENVIRONMENT_ONLY
    for name, help_text in flags.items():
        description = (ServerSettings.model_fields[name].description or "").rstrip(".").replace("%", "%%")
        assert help_text.startswith(description) and f"env MVIT_{name.upper()}" in help_text, name


def test_flags_become_settings() -> None:
    from app.cli._common import settings_from

    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "a",
            "--model",
            "b",
            "--no-access-log",
            "--max-batch-size",
            "4",
            "--backend",
            "onnx",
        ]
    )
    settings = settings_from(args)
    assert settings.models == ["a", "b"] and settings.access_log is False
    assert settings.max_batch_size == 4 and settings.backend == "onnx"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--api-tokens", "secret"])  # never a flag: `ps` shows it


def test_workers_are_a_count_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli._common import settings_from

    for given, expected in (("auto", "auto"), ("AUTO", "auto"), ("3", 3)):
        assert settings_from(build_parser().parse_args(["serve", "--workers", given])).workers == expected
    monkeypatch.setenv("MVIT_WORKERS", "auto")
    assert ServerSettings().workers == "auto"
    for wrong in ("0", "two", "-1", "1.5"):
        with pytest.raises(
            ValidationError, match=f"give a number of processes \\(1 or more\\) or auto, not '{wrong}'"
        ):
            ServerSettings(workers=wrong)


def test_the_model_options_are_the_servers_defaults_and_remember_what_the_operator_set() -> None:
    settings = ServerSettings(models=[], backend="onnx", max_batch_size=4, port=9000)
    options = settings.model_options()
    assert type(options) is ModelOptions and "port" not in options.model_dump()
    assert (options.backend, options.max_batch_size, options.inference_threads) == (
        "onnx",
        4,
        settings.inference_threads,
    )
    assert options.model_fields_set == {"backend", "max_batch_size"}  # a tuning record never overrides these
    overridden = ModelEntry(name="m", instances=2).options(options)
    assert overridden.model_fields_set == {"backend", "max_batch_size", "instances"}
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModelOptions(port=9000)


def test_a_models_yaml_entry_takes_the_model_options_with_the_settings_limits() -> None:
    assert set(ModelEntry.model_fields) == {"name", *PER_MODEL_OPTIONS}
    for name in PER_MODEL_OPTIONS:
        assert ModelEntry.model_fields[name].description == ServerSettings.model_fields[name].description
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ModelEntry(name="m", max_batch_size=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModelEntry(name="m", max_batch=4)
    defaults = ServerSettings(models=[])
    assert ModelEntry(name="m", max_batch_size=2).options(defaults.model_options()).max_batch_size == 2


def documented_settings(heading: str) -> list[str]:
    """The settings of docs/configuration.md's table under `heading`, in its order."""
    configuration = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = configuration.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    return [name.lower() for name in re.findall(r"^\| `MVIT_(\w+)` \|", section, flags=re.M)]


def test_the_docs_list_every_setting_under_its_owner_and_every_models_yaml_key() -> None:
    model_options = list(ModelOptions.model_fields)
    server = [name for name in ServerSettings.model_fields if name not in model_options]
    assert documented_settings("The server (`ServerSettings`)") == server
    assert documented_settings("Every model's defaults (`ModelOptions`)") == model_options
    configuration = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for flag in REPEATED_FLAGS.values():
        assert f"`{flag}`" in configuration, flag
    repository = (ROOT / "docs" / "model-repository.md").read_text(encoding="utf-8")
    keys = set(re.findall(r"^\| `(\w+)` \|", repository, flags=re.M))
    assert {"name", *PER_MODEL_OPTIONS} <= keys, (
        f"docs/model-repository.md lacks {({'name', *PER_MODEL_OPTIONS}) - keys}"
    )
