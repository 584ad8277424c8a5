"""`mvit predict`: one image file through a model, without HTTP; prints the HTTP answer's JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.cli._common import (
    MODEL_LOADING_SETTINGS,
    Subcommands,
    add_setting_flags,
    one_line_errors,
    prepare_models,
    settings_from,
)

# The settings `mvit predict` takes: which model, and how to load and feed it.
PREDICT_SETTINGS = (
    "models",
    "model_repository",
    "hub_revision",
    *MODEL_LOADING_SETTINGS,
    "onnx_providers",
    "onnx_allow_spinning",
    "onnx_cache",
    "onnx_auto_export",
    "max_image_pixels",
    "jpeg_reduce_gap",
)


def register(sub: Subcommands) -> None:
    predict = sub.add_parser(
        "predict", allow_abbrev=False, help="run one image file through a model without HTTP"
    )
    predict.add_argument("image", help="image file")
    add_setting_flags(predict, PREDICT_SETTINGS)
    predict.add_argument("--top-k", type=int)
    predict.add_argument("--function-to-apply", choices=["softmax", "sigmoid", "none"])
    predict.set_defaults(func=run)


@one_line_errors("predict")
def run(args: argparse.Namespace) -> int:
    from app.repository import resolve
    from app.runtime.models import load_model
    from app.runtime.pipeline import predict

    settings = settings_from(args)
    parameters = {"top_k": args.top_k, "function_to_apply": args.function_to_apply}
    data = Path(args.image).read_bytes()
    entry = prepare_models(settings)[0]
    options = entry.options(settings.model_options())
    one_image = options.model_copy(update={"instances": 1})  # no concurrent batches
    model = load_model(resolve(entry.name, settings.model_repository), one_image)
    given = {k: v for k, v in parameters.items() if v is not None}
    print(json.dumps(predict(model, data, given, settings.max_image_pixels), indent=2))
    return 0
