"""`mvit`: serve, fetch, demo-models, convert, export, predict, tune."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

log = logging.getLogger("mvit")


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from app.config import Settings
    from app.errors import validation_problems

    overrides = {
        key: value for key, value in vars(args).items() if key in Settings.model_fields and value is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = validation_problems(exc.errors())
        raise SystemExit(f"mvit: invalid configuration: {problems}") from None


def _tool_settings(args: argparse.Namespace) -> Any:
    """Settings for a tool command whose positional model arguments are not the served models."""
    return _settings(argparse.Namespace(**{**vars(args), "models": None}))


async def _serve(settings: Any) -> int:
    import uvicorn

    from app.api import create_app
    from app.api.server import DrainingServer

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # app.logs configured the handlers
        access_log=False,  # the app writes its own access lines (request id, model, phases)
        timeout_graceful_shutdown=_AFTER_DRAIN_S,
    )
    server = DrainingServer(config, app.state.lifecycle, settings.drain_timeout_s)
    serving = asyncio.create_task(server.serve())
    while not hasattr(app.state, "loader") and not serving.done():
        await asyncio.sleep(0.02)
    if hasattr(app.state, "loader"):
        await asyncio.wait({app.state.loader, serving}, return_when=asyncio.FIRST_COMPLETED)
    manager = app.state.manager
    if manager.error:
        log.error("mvit: stopping, a model could not be loaded: %s", manager.error)
        server.should_exit = True
    await serving
    return 1 if manager.error else 0


# After the drain, how long uvicorn waits for connections still open (a request past the drain timeout,
# a slow upload) before it cuts them.
_AFTER_DRAIN_S = 2.0


def cmd_serve(args: argparse.Namespace) -> int:
    # Spinning OpenMP threads steal the cores that decode threads need; sleep when idle instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from app.api.auth import TokenFileError, configured_tokens
    from app.errors import CheckpointError
    from app.logs import configure_logging

    settings = _settings(args)
    ray_options = _ray_options(args)
    configure_logging(settings.log_level, settings.log_format)
    try:  # what can be checked before the port is bound fails here, in one line
        configured_tokens(settings)
        _prepare_models(settings)
    except (CheckpointError, TokenFileError) as exc:
        print(f"mvit serve: {exc}", file=sys.stderr)
        return 1
    if ray_options is not None:
        from app.ray_serve import serve_until_stopped

        return serve_until_stopped(settings, ray_options, args.ray_address)
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        return runner.run(_serve(settings))


def _ray_options(args: argparse.Namespace) -> Any:
    """`--ray`'s RayOptions, None without it; SystemExit for Ray flags without --ray, bad values, no Ray."""
    if not args.ray:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("replicas", "ray_cpus", "ray_address")
            if getattr(args, name)
        ]
        if given:
            raise SystemExit(
                f"mvit serve: {' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --ray"
            )
        return None
    try:
        from app.ray_serve import RayOptions
    except ImportError:
        raise SystemExit(
            "mvit serve --ray: Ray is not installed: pip install 'mobilevitv2-serve[ray]'"
        ) from None
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
        raise SystemExit(
            f"mvit serve: invalid --replicas or --ray-cpus: {validation_problems(exc.errors())}"
        ) from None


def _prepare_models(settings: Any) -> list[Any]:
    """Every configured model: its backend installed, fetched when it is a Hub id not fetched yet (pinned,
    verified, as `mvit fetch`), and its folder readable. Returns the models.yaml entries."""
    from app.backends import require_backend, verify_with_torch
    from app.repository import resolve
    from app.repository.models_yaml import served_models
    from app.repository.resolve import ensure_available

    entries = served_models(settings)
    for entry in entries:
        require_backend(entry.settings(settings).backend)
        ensure_available(entry.name, settings.model_repository, settings.hub_revision, verify_with_torch)
        resolve(entry.name, settings.model_repository)
    return entries


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it): a cheaper loop for every request's hops
    between the event loop and the decode and inference threads. Plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


DEMO_TASKS = ["classification", "segmentation", "detection"]


def cmd_demo_models(args: argparse.Namespace) -> int:
    from app.repository.models_yaml import REPOSITORY_FILE, add_to_repository_file
    from app.tasks import TASK_BY_CLI_NAME
    from app.tools.demo_models import write_demo_model

    directory = Path(args.directory)
    written: list[str] = []
    try:
        for task in args.task or DEMO_TASKS:
            for width in args.width or [0.5]:
                for size in args.image_size or [None]:
                    path = write_demo_model(directory, TASK_BY_CLI_NAME[task].name, width, size, args.seed)
                    print(path)
                    written.append(path.name)
        if not args.no_register:
            added = add_to_repository_file(directory / REPOSITORY_FILE, written)
            if added:
                print(f"{directory / REPOSITORY_FILE}: now serves {', '.join(added)}", file=sys.stderr)
    except (ValueError, OSError) as exc:  # an image size that is no multiple of 32, an unwritable folder
        print(f"mvit demo-models: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from app.errors import CheckpointError
    from app.tools.convert import convert_cvnets_checkpoint

    try:
        resample = {"bilinear": 2, "bicubic": 3}.get(args.resample or "")
        path = convert_cvnets_checkpoint(
            Path(args.checkpoint), Path(args.directory), args.image_size, resample
        )
    except (OSError, CheckpointError) as exc:
        print(f"mvit convert: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from app.errors import CheckpointError
    from app.repository.models_yaml import REPOSITORY_FILE, add_to_repository_file
    from app.tools.fetch import DEFAULT_MODELS, fetch

    settings = _tool_settings(args)
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
        if not args.no_register:
            added = add_to_repository_file(repository / REPOSITORY_FILE, fetched)
            if added:
                print(f"{repository / REPOSITORY_FILE}: now serves {', '.join(added)}", file=sys.stderr)
    except ImportError as exc:
        print(
            f"mvit fetch: needs the full install ({exc.name} is missing): `pip install .[export]`",
            file=sys.stderr,
        )
        return 1
    except (OSError, CheckpointError) as exc:
        print(f"mvit fetch: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.repository import CheckpointError, resolve

    try:
        from app.backends.onnx_export import DEFAULT_OPSET, export_onnx
        from app.tools.quantize import quantize_int8
    except ImportError as exc:
        print(f"mvit export: needs torch and onnx ({exc}); `pip install .[export]`", file=sys.stderr)
        return 1
    from app.backends import verify_with_torch
    from app.repository.models_yaml import served_models
    from app.repository.resolve import ensure_available

    settings = _tool_settings(args)
    if args.calibration is not None and not args.calibration.is_dir():
        print(f"mvit export: --calibration {args.calibration} is not a folder of images", file=sys.stderr)
        return 1
    if not args.quantize and (args.quantizer != "onnxruntime" or args.calibration is not None):
        print("mvit export: --quantizer and --calibration go with --quantize int8", file=sys.stderr)
        return 1
    if args.quantizer == "nncf" and args.calibration is None:
        print("mvit export: --quantizer nncf needs --calibration IMAGES/", file=sys.stderr)
        return 1
    if bool(args.models) == bool(args.all):
        print("mvit export: give model folders, or --all (every model models.yaml lists)", file=sys.stderr)
        return 1
    try:
        sources = args.models or [entry.name for entry in served_models(settings)]
        for source in sources:
            ensure_available(source, settings.model_repository, settings.hub_revision, verify_with_torch)
            model_dir = resolve(source, settings.model_repository)
            print(export_onnx(model_dir, args.opset or DEFAULT_OPSET))
            if args.quantize:
                if args.calibration is None:
                    log.warning(
                        "no --calibration images: dynamic INT8, which is slower than fp32 on CPU for "
                        "this convolutional network; give calibration images for static INT8"
                    )
                print(quantize_int8(model_dir, args.calibration, args.calibration_count, args.quantizer))
    except (OSError, CheckpointError) as exc:
        print(f"mvit export: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from app.errors import CheckpointError, ServiceError
    from app.runtime.models import load_model
    from app.runtime.pipeline import predict

    settings = _settings(args)
    parameters = {"top_k": args.top_k, "function_to_apply": args.function_to_apply}
    try:
        data = Path(args.image).read_bytes()
        entry = _prepare_models(settings)[0]
        one_image = entry.settings(settings).model_copy(update={"instances": 1})  # no concurrent batches
        model = load_model(entry.name, one_image)
        result = predict(
            model, data, {k: v for k, v in parameters.items() if v is not None}, settings.max_image_pixels
        )
    except (OSError, CheckpointError) as exc:
        print(f"mvit predict: {exc}", file=sys.stderr)
        return 1
    except ServiceError as exc:
        print(f"mvit predict: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from app.errors import CheckpointError
    from app.intake.preprocess import Preprocessing
    from app.repository import resolve
    from app.repository.tuning import find_record, write_record
    from app.runtime.tuned import best_throughput
    from app.runtime.tuner import instance_counts_for, tune

    settings = _tool_settings(args)
    instance_counts = args.instance_counts or instance_counts_for(settings.inference_threads)
    try:
        model_dir = resolve(args.model, settings.model_repository)
        input_size = Preprocessing.from_hf_config(model_dir.preprocessor_config).fixed_input_size
        if input_size is None:
            raise CheckpointError(f"{model_dir.path}: preprocessing must produce a fixed input size (crop)")
        record, best = tune(
            model_dir,
            settings,
            input_size,
            args.batch_sizes,
            instance_counts,
            args.seconds,
            args.rounds,
            args.latency_slack,
            command=shlex.join(["mvit", *args.argv]),
            progress=lambda line: print(line, file=sys.stderr),
            try_spinning=args.try_spinning,
        )
        recorded = write_record(model_dir.path, record)
    except (OSError, CheckpointError) as exc:
        print(f"mvit tune: {exc}", file=sys.stderr)
        return 1
    print(f"machine: {record.key.describe()}")
    for row in record.measured:
        onnx_only = (
            f", instances {row['instances']}, spinning {'on' if row['onnx_allow_spinning'] else 'off'}"
            if record.key.backend == "onnx"
            else f", instances {row['instances']}"
            if record.key.backend == "openvino"
            else ""
        )
        print(
            f"  batch {row['max_batch_size']}{onnx_only}: {row['images_per_s']} img/s "
            f"({row['images_per_s_range'][0]}-{row['images_per_s_range'][1]}), lone request {row['lone_latency_ms']} ms"
        )
    print(
        f"chosen: {record.chosen} ({best.throughput:.1f} img/s, lone request {best.lone_latency_ms:.1f} ms)"
    )
    if record.key.precision != "fp32":
        fp32 = find_record(model_dir.path, replace(record.key, precision="fp32"))
        if fp32 is None:
            print("tune fp32 too (the same command without the precision flag) to compare the two here")
        else:
            print(
                f"{record.key.precision}: {best_throughput(record):.1f} img/s against fp32's "
                f"{best_throughput(fp32):.1f} on this machine"
                + ("; SLOWER: serve fp32 here" if best_throughput(record) < best_throughput(fp32) else "")
            )
    print(f"recorded in {recorded}; `mvit serve` applies it on this machine")
    return 0


# The settings `mvit predict` takes: which model, and how to load and feed it.
PREDICT_SETTINGS = (
    "models",
    "model_repository",
    "hub_revision",
    "backend",
    "device",
    "onnx_precision",
    "openvino_precision",
    "torch_precision",
    "onnx_optimization",
    "onnx_providers",
    "onnx_allow_spinning",
    "onnx_cache",
    "onnx_auto_export",
    "max_image_pixels",
    "inference_threads",
    "jpeg_reduce_gap",
)


def add_setting_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """One flag per setting, its help and choices taken from the setting's field (app/config.py)."""
    from pydantic_core import PydanticUndefined

    from app.config import ENVIRONMENT_ONLY, REPEATED_FLAGS, Settings

    for name in names:
        if name in ENVIRONMENT_ONLY:
            continue
        field = Settings.model_fields[name]
        annotation = field.annotation
        if get_origin(annotation) in (Union, UnionType):  # X | None
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        help_text = (field.description or "").rstrip(".")
        if field.default is not PydanticUndefined and field.default not in (None, [], ""):
            default = field.default.value if isinstance(field.default, Enum) else field.default
            help_text += f" (default {default})"
        help_text += f"; env MVIT_{name.upper()}"
        flag = REPEATED_FLAGS.get(name, "--" + name.replace("_", "-"))
        options: dict[str, Any] = {"dest": name, "help": help_text.replace("%", "%%")}
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif get_origin(annotation) is list:
            options.update(action="append", metavar=name.removesuffix("s").upper())
        elif get_origin(annotation) is Literal:
            options.update(choices=list(get_args(annotation)), type=str.lower)  # `--log-level INFO` too
        else:
            options["type"] = annotation
        parser.add_argument(flag, **options)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviated flags: `--api-tokens X` must not quietly become `--api-tokens-file X`.
    parser = argparse.ArgumentParser(
        prog="mvit", description="MobileViTv2 inference service", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(command_parser=command_parser)
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


def add_serve_command(sub: Any) -> None:
    from app.config import Settings

    serve = sub.add_parser("serve", allow_abbrev=False, help="run the HTTP service")
    add_setting_flags(serve, Settings.model_fields)
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
    serve.set_defaults(func=cmd_serve)


def add_demo_models_command(sub: Any) -> None:
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
    demo.set_defaults(func=cmd_demo_models)


def add_convert_command(sub: Any) -> None:
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
    convert.set_defaults(func=cmd_convert)


def add_fetch_command(sub: Any) -> None:
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
    fetch.set_defaults(func=cmd_fetch)


def add_export_command(sub: Any) -> None:
    from app.backends.onnx_files import QUANTIZERS

    export = sub.add_parser(
        "export", allow_abbrev=False, help="export model folders to ONNX (model.onnx), optionally INT8 too"
    )
    export.add_argument("models", nargs="*", metavar="FOLDER_OR_HUB_ID", help="model folders or Hub ids")
    export.add_argument("--all", action="store_true", help="every model the repository's models.yaml lists")
    add_setting_flags(export, ("model_repository", "hub_revision"))
    export.add_argument("--opset", type=int, help="ONNX opset (default 17; 18+ uses torch.export)")
    export.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write model.int8.onnx (static with --calibration, else dynamic)",
    )
    export.add_argument("--calibration", type=Path, help="folder of representative images for static INT8")
    export.add_argument(
        "--calibration-count", type=int, default=100, help="most calibration images to use (default 100)"
    )
    export.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default="onnxruntime",
        help="who writes model.int8.onnx: onnxruntime (default; fast on both runtimes) or nncf (faster on "
        "--backend openvino, slower than fp32 on ONNX Runtime; needs '.[export,nncf]' and --calibration)",
    )
    export.set_defaults(func=cmd_export)


def add_predict_command(sub: Any) -> None:
    predict = sub.add_parser(
        "predict", allow_abbrev=False, help="run one image file through a model without HTTP"
    )
    predict.add_argument("image", help="image file")
    add_setting_flags(predict, PREDICT_SETTINGS)
    predict.add_argument("--top-k", type=int)
    predict.add_argument("--function-to-apply", choices=["softmax", "sigmoid", "none"])
    predict.set_defaults(func=cmd_predict)


def add_tune_command(sub: Any) -> None:
    from app.repository.tuning import BATCH_SIZES

    tune = sub.add_parser(
        "tune",
        allow_abbrev=False,
        help="measure a model's best batch size, instances and spin policy on this machine; record them",
    )
    tune.add_argument("model", metavar="FOLDER", help="model folder (or a model the repository holds)")
    add_setting_flags(
        tune,
        (
            "model_repository",
            "backend",
            "device",
            "onnx_precision",
            "openvino_precision",
            "torch_precision",
            "onnx_optimization",
            "inference_threads",
        ),
    )

    def sizes(text: str) -> list[int]:
        values = [int(part) for part in text.split(",") if part.strip()]
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError("give positive integers, comma-separated")
        return values

    tune.add_argument("--batch-sizes", type=sizes, default=list(BATCH_SIZES), help="default 1,2,4,8")
    tune.add_argument(
        "--instances",
        dest="instance_counts",
        type=sizes,
        help="instance counts to try (ONNX Runtime); default 1, 2, 4 and the threads",
    )
    tune.add_argument("--seconds", type=float, default=3.0, help="per configuration and round (default 3)")
    tune.add_argument("--rounds", type=int, default=3, help="rounds over the grid, rotated (default 3)")
    tune.add_argument(
        "--latency-slack",
        type=float,
        default=0.25,
        help="how much slower than the best a lone request may be in the chosen configuration (default 0.25)",
    )
    tune.add_argument(
        "--try-spinning",
        action="store_true",
        help="also try spinning ONNX Runtime threads: faster raw, but they hold the cores the decode threads "
        "need, so measure the service (scripts/bench.py) before keeping it",
    )
    tune.set_defaults(func=cmd_tune)


COMMANDS = (
    add_serve_command,
    add_demo_models_command,
    add_convert_command,
    add_fetch_command,
    add_export_command,
    add_predict_command,
    add_tune_command,
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, extras = build_parser().parse_known_args(argv)
    if extras:  # the command's usage, not the top-level one
        args.command_parser.error(unrecognized(extras, args.command_parser))
    args.argv = argv
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
