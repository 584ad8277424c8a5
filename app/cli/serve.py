"""`mvit serve`: the HTTP service, in this process or as a Ray Serve application (`--ray`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from app.cli._common import (
    CommandError,
    Subcommands,
    add_setting_flags,
    one_line_errors,
    prepare_models,
    settings_from,
)

if TYPE_CHECKING:
    from app.config import ServerSettings
    from app.ray_serve import RayOptions


def register(sub: Subcommands) -> None:
    from app.config import PER_MODEL_OPTIONS, ModelOptions, ServerSettings

    serve = sub.add_parser("serve", allow_abbrev=False, help="run the HTTP service")
    server = serve.add_argument_group("the server")
    add_setting_flags(
        server, [name for name in ServerSettings.model_fields if name not in ModelOptions.model_fields]
    )
    models = serve.add_argument_group(
        "every model's defaults",
        f"a models.yaml entry may set {', '.join(PER_MODEL_OPTIONS)} for its own model (docs/model-repository.md)",
    )
    add_setting_flags(models, ModelOptions.model_fields)
    ray = serve.add_argument_group("Ray Serve (pip install 'mobilevitv2-serve[ray]'; docs/deployment.md)")
    ray.add_argument(
        "--ray", action="store_true", help="serve as a Ray Serve application, one copy per replica"
    )
    ray.add_argument(
        "--replicas",
        metavar="N|MIN-MAX",
        help="with --ray: N replicas, or autoscale between MIN and MAX (default 1)",
    )
    ray.add_argument("--ray-cpus", type=float, help="with --ray: CPUs each replica reserves (default 1)")
    ray.add_argument(
        "--ray-address",
        help="with --ray: a running cluster (ray://HOST:10001 or auto); default: start one here",
    )
    serve.set_defaults(func=run)


@one_line_errors("serve")
def run(args: argparse.Namespace) -> int:
    # Spinning OpenMP threads steal the cores that decode threads need; sleep when idle instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = settings_from(args)
    ray_options = ray_options_from(args)
    if settings.workers != 1 and ray_options is not None:
        args.command_parser.error("--workers and --ray: Ray runs replicas (--replicas) instead")
    from app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if settings.workers == "auto":
        settings = with_auto_workers(settings)
    if settings.workers > 1:
        share_metrics_between_processes()
    from app.api.auth import TokenFileError, configured_tokens

    try:  # what can be checked before the port is bound fails here, in one line
        configured_tokens(settings)
    except TokenFileError as exc:
        raise CommandError(str(exc)) from None
    prepare_models(settings)
    if ray_options is not None:
        from app.ray_serve import serve_until_stopped

        return serve_until_stopped(settings, ray_options, args.ray_address)
    if settings.workers > 1:
        from app.api.workers import run_workers

        return run_workers(settings)
    from app.api.server import run_server

    return run_server(settings)


def with_auto_workers(settings: ServerSettings) -> ServerSettings:
    import logging

    from app.runtime.apply_tuning import auto_workers

    count, why = auto_workers(settings)
    logging.getLogger("app.cli.serve").info("mvit: --workers auto: %d (%s)", count, why)
    return settings.model_copy(update={"workers": count})


def share_metrics_between_processes() -> None:
    """prometheus_client chooses where its values live when it is first imported: with workers, files in a
    folder they all write and every /metrics reads (PROMETHEUS_MULTIPROC_DIR), removed at exit."""
    import atexit
    import shutil
    import tempfile

    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the workers' metrics folder was set")
    folder = tempfile.mkdtemp(prefix="mvit-metrics-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def ray_options_from(args: argparse.Namespace) -> RayOptions | None:
    """`--ray`'s RayOptions, None without it. Ray flags without --ray and bad values are usage errors; Ray
    not installed is a CommandError."""
    usage_error = args.command_parser.error
    if not args.ray:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("replicas", "ray_cpus", "ray_address")
            if getattr(args, name)
        ]
        if given:
            usage_error(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --ray")
        return None
    try:
        from app.ray_serve import RayOptions
    except ImportError:
        raise CommandError("Ray is not installed: pip install 'mobilevitv2-serve[ray]'") from None
    from pydantic import ValidationError

    from app.errors import validation_problems

    low, _, high = (args.replicas or "1").partition("-")
    fields: dict[str, Any] = (
        {"autoscale": True, "min_replicas": low, "max_replicas": high} if high else {"num_replicas": low}
    )
    if args.ray_cpus is not None:
        fields["num_cpus"] = args.ray_cpus
    try:
        return RayOptions(**fields)
    except ValidationError as exc:
        usage_error(f"invalid --replicas or --ray-cpus: {validation_problems(exc.errors())}")
