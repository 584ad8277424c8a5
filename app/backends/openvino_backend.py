"""OpenVINO backend: runs a model folder's ONNX export with OpenVINO Runtime. Imports neither torch nor
ONNX Runtime.

- the export: `model.onnx`, or with `--onnx-precision int8` the calibrated QDQ `model.int8.onnx`, which
  OpenVINO runs as INT8 (exported first when missing, as for ONNX Runtime: app/backends/onnx_files.py);
- precision: f32 by default, for fidelity; `--openvino-precision bf16` opts in to bfloat16 inference
  (CPUs with AVX512-BF16 or AMX; refused clearly elsewhere, as OpenVINO would otherwise fall back
  silently);
- device: `cpu`, or `gpu` / `gpu.N` / `npu` for Intel iGPUs and NPUs, refused with the list of
  available devices when absent;
- instances: as for ONNX Runtime, a lone request runs on a one-stream compilation that uses every
  thread (lowest latency), and under load `instances` requests run at once on a compilation with that
  many streams, each on its share of the threads.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from app.backends.onnx_files import SOURCE_SHA256, available_export, is_stale, refresh_stale
from app.config import ModelOptions
from app.errors import CheckpointError
from app.intake.preprocess import Preprocessing
from app.repository import ModelDir

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def openvino_device(device: str, available: list[str]) -> str:
    """`cpu`, `gpu`, `gpu.1`, `npu` -> OpenVINO's name, refused when this machine has no such device."""
    name = device.upper()
    if name == "CUDA" or name.startswith("CUDA:"):
        raise CheckpointError(
            f"the openvino backend has no device {device!r}: use cpu, gpu, gpu.N or npu "
            f"(available here: {', '.join(available)}), or --backend onnx for CUDA"
        )
    if name not in available and not (name == "GPU" and any(d.startswith("GPU") for d in available)):
        raise CheckpointError(
            f"OpenVINO device {name} is not available here (available: {', '.join(available)}); "
            "choose another with --device"
        )
    return name


def compile_options(options: ModelOptions, device: str, streams: int) -> dict[str, Any]:
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[options.openvino_precision]}
    if device == "CPU":
        config |= {
            "NUM_STREAMS": streams,
            "INFERENCE_NUM_THREADS": options.inference_threads,
            "ENABLE_CPU_PINNING": False,  # the decode threads share these cores
        }
    return config


class OpenVinoBackend:
    name = "openvino"

    def __init__(
        self,
        latency: ov.CompiledModel,
        throughput: ov.CompiledModel,
        instances: int,
        artifact: str,
        device: str,
    ) -> None:
        self.artifact = artifact
        self.instances = instances
        self._device = device
        self.output_names = [output.get_any_name() for output in latency.outputs]
        self._latency_requests = self._pool(latency, 1)
        self._instance_requests = self._pool(throughput, instances)

    @staticmethod
    def _pool(compiled: ov.CompiledModel, size: int) -> queue.Queue[ov.InferRequest]:
        requests: queue.Queue[ov.InferRequest] = queue.Queue()
        for _ in range(size):
            requests.put(compiled.create_infer_request())
        return requests

    @property
    def device_type(self) -> str:
        return self._device.split(".")[0].lower()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(self._latency_requests, batch)

    def infer_on_instance(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One of `instances` concurrent runs, each on its own stream."""
        return self._run(self._instance_requests, batch)

    def _run(self, pool: queue.Queue[ov.InferRequest], batch: np.ndarray) -> dict[str, np.ndarray]:
        with _borrowed(pool) as request:
            request.infer({0: np.ascontiguousarray(batch)})
            # Copies: the request reuses its output memory on the next call.
            return {
                name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self.output_names)
            }


@contextmanager
def _borrowed(pool: queue.Queue[ov.InferRequest]) -> Iterator[ov.InferRequest]:
    request = pool.get()
    try:
        yield request
    finally:
        pool.put(request)


def _recorded_sha256(model: ov.Model) -> str | None:
    try:
        return str(model.get_rt_info(["framework", SOURCE_SHA256]).astype(str))
    except RuntimeError:  # not an export of this project
        return None


def _input_size(model: ov.Model) -> tuple[int, int] | None:
    shape = model.inputs[0].get_partial_shape()
    height, width = shape[2], shape[3]
    return (height.get_length(), width.get_length()) if height.is_static and width.is_static else None


def load_openvino_backend(model_dir: ModelDir, options: ModelOptions) -> OpenVinoBackend:
    core = ov.Core()
    device = openvino_device(options.device, list(core.available_devices))
    if options.openvino_precision == "bf16" and device == "CPU":
        capabilities = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if "BF16" not in capabilities:
            raise CheckpointError(
                f"--openvino-precision bf16: this CPU has no bfloat16 support (OpenVINO reports "
                f"{', '.join(capabilities)}); serve fp32, or int8 with --onnx-precision int8"
            )
    source: Path = available_export(model_dir, options)
    model = core.read_model(str(source))
    if is_stale(_recorded_sha256(model), model_dir):
        refresh_stale(source, model_dir, options)
        model = core.read_model(str(source))
    size = Preprocessing.from_hf_config(model_dir.preprocessor_config).fixed_input_size
    if _input_size(model) != size:
        raise CheckpointError(
            f"{source} takes {_input_size(model)} inputs but the preprocessing makes {size}: export it again"
        )
    on_cpu = device == "CPU"
    instances = options.instances or (options.inference_threads if on_cpu else 1)
    latency = core.compile_model(model, device, compile_options(options, device, streams=1))
    throughput = (
        latency
        if instances == 1
        else core.compile_model(model, device, compile_options(options, device, instances))
    )
    return OpenVinoBackend(latency, throughput, instances, source.name, device)


load = load_openvino_backend
