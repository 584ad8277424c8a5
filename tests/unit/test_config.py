"""Configuration is stated once (app/config.py): the CLI flags, models.yaml entries and docs follow it."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from app.cli import build_parser
from app.config import ENVIRONMENT_ONLY, MODEL_OPTIONS, REPEATED_FLAGS, Settings
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
    assert set(flags) == set(Settings.model_fields) - ENVIRONMENT_ONLY
    for name, help_text in flags.items():
        description = (Settings.model_fields[name].description or "").rstrip(".").replace("%", "%%")
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


def test_a_models_yaml_entry_takes_the_model_options_with_the_settings_limits() -> None:
    assert set(ModelEntry.model_fields) == {"name", *MODEL_OPTIONS}
    for name in MODEL_OPTIONS:
        assert ModelEntry.model_fields[name].description == Settings.model_fields[name].description
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ModelEntry(name="m", max_batch_size=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModelEntry(name="m", max_batch=4)
    defaults = Settings(models=[])
    assert ModelEntry(name="m", max_batch_size=2).settings(defaults).max_batch_size == 2


def test_the_docs_list_every_setting_and_every_models_yaml_key() -> None:
    configuration = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"MVIT_{name.upper()}" not in configuration]
    assert not missing, f"docs/configuration.md lacks {missing}"
    for flag in REPEATED_FLAGS.values():
        assert f"`{flag}`" in configuration, flag
    repository = (ROOT / "docs" / "model-repository.md").read_text(encoding="utf-8")
    keys = set(re.findall(r"^\| `(\w+)` \|", repository, flags=re.M))
    assert {"name", *MODEL_OPTIONS} <= keys, (
        f"docs/model-repository.md lacks {({'name', *MODEL_OPTIONS}) - keys}"
    )
