"""The ONNX export a backend runs (ONNX Runtime, OpenVINO): which file, and exporting it when it is missing
or was exported from other weights. Imports no runtime, and torch only to export."""

from __future__ import annotations

import logging
from pathlib import Path

from app.config import ModelOptions
from app.errors import CheckpointError
from app.repository import ModelDir, file_sha256

log = logging.getLogger(__name__)

SOURCE_SHA256 = "mvit.source_sha256"  # the export's metadata: SHA-256 of the weights it came from
QUANTIZER = "mvit.quantizer"  # an INT8 export's metadata: which of QUANTIZERS wrote it
QUANTIZERS = ("onnxruntime", "nncf")  # `mvit export --quantizer`: app/tools/quantize.py


def export(model_dir: ModelDir, why: str) -> Path:
    log.info("%s: %s; exporting to ONNX", model_dir.model_id, why)
    try:
        from app.backends.onnx_export import export_onnx

        return export_onnx(model_dir)
    except ImportError as exc:  # an ONNX-only install: torch / onnx are not there
        raise CheckpointError(
            f"{model_dir.path}: {why}, and this install cannot export (no {exc.name or 'torch'}). "
            f"Run `mvit export {model_dir.path}` where the full install is (`pip install .[export]`)"
        ) from None


def available_export(model_dir: ModelDir, options: ModelOptions) -> Path:
    """The export for `options.onnx_precision`, exported first when it is missing and that is allowed."""
    source = model_dir.onnx_file(options.onnx_precision)
    if source.is_file():
        return source
    if options.onnx_precision != "fp32":
        raise CheckpointError(
            f"{model_dir.path} has no {source.name}: create it with "
            f"`mvit export {model_dir.path} --quantize int8 --calibration IMAGES/`"
        )
    if not options.onnx_auto_export:
        raise CheckpointError(f"{model_dir.path} has no {source.name}: run `mvit export {model_dir.path}`")
    return export(model_dir, f"no {source.name}")


def is_stale(recorded_sha256: str | None, model_dir: ModelDir) -> bool:
    """True when the export records other source weights than the folder holds (e.g. a re-fetch)."""
    return bool(model_dir.weights and recorded_sha256 and recorded_sha256 != file_sha256(model_dir.weights))


def refresh_stale(source: Path, model_dir: ModelDir, options: ModelOptions) -> None:
    """Export again an fp32 export of other weights, or refuse when that is not allowed."""
    if options.onnx_precision != "fp32" or not options.onnx_auto_export:
        raise CheckpointError(
            f"{source} was exported from other weights than {model_dir.weights}: "
            f"export it again (`mvit export {model_dir.path}`)"
        )
    export(model_dir, f"{source.name} was exported from other weights")
