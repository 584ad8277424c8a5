"""`mvit export --quantize int8`: model.int8.onnx from model.onnx.

Two quantizers write the same kind of file (QDQ ONNX), tuned for different runtimes:
- `onnxruntime` (default): ONNX Runtime's static QDQ with calibration images, or dynamic without. Its
  file runs well on both ONNX Runtime and OpenVINO.
- `nncf`: OpenVINO's NNCF post-training quantization (transformer preset). It quantizes the inputs of
  the convolutions and leaves most of their outputs in float: OpenVINO runs that faster still (fewer
  requantizations), but ONNX Runtime fuses a convolution into an integer kernel only when its output is
  quantized too, so it runs these in float after dequantizing, slower than fp32. The measurements are in
  docs/performance.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
from app.backends.onnx_files import QUANTIZER, QUANTIZERS
from app.errors import CheckpointError, ServiceError
from app.intake.decode import IMAGE_SUFFIXES, decode_image
from app.intake.preprocess import Preprocessing, preprocess
from app.repository import ModelDir

# Convolutions and the classifier carry the compute. Quantizing the norms' reductions, softmax and
# attention products too added little speed and cost a lot of agreement.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
Quantizer = Literal["onnxruntime", "nncf"]  # QUANTIZERS


def calibration_images(folder: Path, count: int) -> list[Path]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise CheckpointError(f"no calibration images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return images[:count]


def calibration_tensor(path: Path, spec: Preprocessing) -> np.ndarray:
    """One calibration image as a batch of one, through the model's own preprocessing."""
    try:
        image = decode_image(path.read_bytes(), max_pixels=200_000_000)
    except ServiceError as exc:
        raise CheckpointError(f"calibration image {path}: {exc.message}") from None
    return preprocess(image, spec)[None]


def quantize_int8(
    model_dir: ModelDir, calibration: Path | None, count: int = 100, quantizer: Quantizer = "onnxruntime"
) -> Path:
    """Write `<model_dir>/model.int8.onnx` from model.onnx.

    `onnxruntime` with a calibration folder: static QDQ (per-channel int8 weights, uint8 activations,
    MinMax ranges over `count` images run through the model's own preprocessing), the fast path on CPU.
    Without: dynamic quantization, which needs no data but turns convolutions into ConvInteger, slower
    than fp32 on CPU. `nncf` needs calibration images.
    """
    if quantizer not in QUANTIZERS:
        raise CheckpointError(f"unknown quantizer {quantizer!r}: {' or '.join(QUANTIZERS)}")
    if quantizer == "nncf" and calibration is None:
        raise CheckpointError("--quantizer nncf needs calibration images (--calibration IMAGES/)")
    source = model_dir.onnx_file("fp32")
    if not source.is_file():
        source = export_onnx(model_dir)
    if quantizer == "nncf" and calibration is not None:
        return _quantize_with_nncf(model_dir, source, calibration, count)
    return _quantize_with_onnxruntime(model_dir, source, calibration, count)


def _quantize_with_nncf(model_dir: ModelDir, source: Path, calibration: Path, count: int) -> Path:
    try:
        import nncf
    except ImportError:
        raise CheckpointError("--quantizer nncf needs NNCF: `pip install '.[export,nncf]'`") from None
    import onnx

    spec = Preprocessing.from_hf_config(model_dir.preprocessor_config)
    paths = calibration_images(calibration, count)
    # Preprocessed as NNCF reads them (it may pass over the set more than once), not all held in memory.
    dataset = nncf.Dataset(paths, lambda path: {INPUT_NAME: calibration_tensor(path, spec)})
    quantized = nncf.quantize(
        onnx.load(source), dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(paths)
    )
    target = model_dir.onnx_file("int8")
    method = f"NNCF post-training, transformer preset, {len(paths)} calibration images from {calibration}"
    with replacing(target, "quantize") as tmp:
        onnx.save(quantized, tmp)
        set_metadata(
            tmp,
            {**read_metadata(source), f"{METADATA_PREFIX}quantization": f"int8 {method}", QUANTIZER: "nncf"},
        )
    return target


def _quantize_with_onnxruntime(
    model_dir: ModelDir, source: Path, calibration: Path | None, count: int
) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = model_dir.onnx_file("int8")
    metadata = read_metadata(source)
    spec = Preprocessing.from_hf_config(model_dir.preprocessor_config)

    class Images(CalibrationDataReader):
        def __init__(self, paths: list[Path]) -> None:
            self._tensors = (calibration_tensor(path, spec) for path in paths)

        def get_next(self) -> dict[str, np.ndarray] | None:
            pixels = next(self._tensors, None)
            return None if pixels is None else {INPUT_NAME: pixels}

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
            set_metadata(
                tmp,
                {**metadata, f"{METADATA_PREFIX}quantization": f"int8 {method}", QUANTIZER: "onnxruntime"},
            )
    finally:
        prepared.unlink(missing_ok=True)
    return target
