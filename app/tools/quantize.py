"""`mvit export --quantize int8`: model.int8.onnx from model.onnx, static with calibration images or dynamic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.backends.onnx_export import (
    INPUT_NAME,
    METADATA_PREFIX,
    export_onnx,
    read_metadata,
    replacing,
    set_metadata,
    temporary_path,
)
from app.errors import CheckpointError, ServiceError
from app.intake.decode import IMAGE_SUFFIXES, decode_image
from app.intake.preprocess import Preprocessing, preprocess
from app.repository import ModelDir

# Convolutions and the classifier carry the compute. Quantizing the norms' reductions, softmax and
# attention products too added little speed and cost a lot of agreement.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]


def calibration_images(folder: Path, count: int) -> list[Path]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise CheckpointError(f"no calibration images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return images[:count]


def quantize_int8(model_dir: ModelDir, calibration: Path | None, count: int = 100) -> Path:
    """Write `<model_dir>/model.int8.onnx` from model.onnx.

    With a calibration folder: static QDQ (per-channel int8 weights, uint8 activations, MinMax ranges over
    `count` images run through the model's own preprocessing), the fast path on CPU. Without: dynamic
    quantization, which needs no data but turns convolutions into ConvInteger, slower than fp32 on CPU.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = model_dir.onnx_file("fp32")
    if not source.is_file():
        source = export_onnx(model_dir)
    target = model_dir.onnx_file("int8")
    metadata = read_metadata(source)
    spec = Preprocessing.from_hf_config(model_dir.preprocessor_config)

    class Images(CalibrationDataReader):
        def __init__(self, paths: list[Path]) -> None:
            self._paths = iter(paths)

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self._paths, None)
            if path is None:
                return None
            try:
                image = decode_image(path.read_bytes(), max_pixels=200_000_000)
            except ServiceError as exc:
                raise CheckpointError(f"calibration image {path}: {exc.message}") from None
            pixels = preprocess(image, spec)
            return {INPUT_NAME: pixels[None]}

    prepared = temporary_path(target, "prepared")
    try:
        quant_pre_process(str(source), str(prepared))
        with replacing(target, "quantize") as tmp:
            if calibration is not None:
                paths = calibration_images(calibration, count)
                quantize_static(
                    str(prepared),
                    str(tmp),
                    Images(paths),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=QUANTIZED_OPS,
                )
                method = f"static QDQ, per-channel, {len(paths)} calibration images from {calibration}"
            else:
                quantize_dynamic(
                    str(prepared), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS
                )
                method = "dynamic, int8 weights"
            set_metadata(tmp, {**metadata, f"{METADATA_PREFIX}quantization": f"int8 {method}"})
    finally:
        prepared.unlink(missing_ok=True)
    return target
