"""`mvit export`: model folders to ONNX (`model.onnx`), and to INT8 with `--quantize int8`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from app.cli._common import CommandError, Subcommands, add_setting_flags, one_line_errors, tool_settings

log = logging.getLogger("mvit")


def register(sub: Subcommands) -> None:
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
    export.set_defaults(func=run)


def check_flags(args: argparse.Namespace) -> None:
    """Combinations that cannot mean anything are usage errors, refused before any work."""
    usage_error = args.command_parser.error
    if args.calibration is not None and not args.calibration.is_dir():
        usage_error(f"--calibration {args.calibration} is not a folder of images")
    if not args.quantize and (args.quantizer != "onnxruntime" or args.calibration is not None):
        usage_error("--quantizer and --calibration go with --quantize int8")
    if args.quantizer == "nncf" and args.calibration is None:
        usage_error("--quantizer nncf needs --calibration IMAGES/")
    if bool(args.models) == bool(args.all):
        usage_error("give model folders, or --all (every model models.yaml lists)")


@one_line_errors("export")
def run(args: argparse.Namespace) -> int:
    check_flags(args)
    try:
        from app.backends.onnx_export import DEFAULT_OPSET, export_onnx
        from app.tools.quantize import quantize_int8
    except ImportError as exc:
        raise CommandError(f"needs torch and onnx ({exc}); `pip install .[export]`") from None
    from app.backends import verify_with_torch
    from app.repository import resolve
    from app.repository.models_yaml import served_models
    from app.repository.resolve import ensure_available

    settings = tool_settings(args)
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
    return 0
