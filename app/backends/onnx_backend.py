"""ONNX Runtime backend: runs a model folder's ONNX export. Imports neither torch nor transformers.

Session setup, in order:
- the export: `model.onnx` (or `model.int8.onnx`); if it is missing, or was exported from other weights
  than the folder now holds, it is (re-)exported when torch is installed and refused otherwise;
- execution providers: CPU unless asked for (`--device cuda`, or an explicit provider list), refused
  with the list of installed ones when unavailable;
- threads: intra-op threads from the CPUs this process may use, one inter-op thread; the threads of
  concurrent instances do not spin-wait by default (spinning threads steal the cores the decode pool
  needs), those of the all-threads session do, since it runs only while nothing else wants the cores;
- instances: on CPU, a second session whose threads are split between `instances` concurrent runs (one
  thread each on 2 CPUs). Small convolutional nets scale poorly across intra-op threads, so concurrent
  single-thread batches beat one batch on all threads (docs/performance.md). The all-threads session serves
  a request that has the model to itself, which is the lowest latency;
- graph optimizations: the level is configurable; the hardware-neutral part (up to "extended") is saved
  under `onnx-cache/` so a restart skips it. Layout transforms ("all") are cheap and CPU-specific, so
  they run at every start rather than being written into a file that may move to another machine.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.backends.onnx_files import QUANTIZER, SOURCE_SHA256, available_export, is_stale, refresh_stale
from app.config import ModelOptions
from app.errors import CheckpointError
from app.intake.preprocess import Preprocessing
from app.repository import ModelDir

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
CACHE_DIR = "onnx-cache"


def _provider_names(providers: list[Any]) -> list[str]:
    """Providers are names or (name, options) pairs."""
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def execution_providers(device: str, requested: list[str]) -> list[Any]:
    """ONNX Runtime providers for `--device` (cpu, cuda, cuda:N) or an explicit list; CPU always last."""
    available = ort.get_available_providers()
    if requested:
        providers: list[Any] = list(requested)
    elif device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif match := re.fullmatch(r"cuda(?::(\d+))?", device):
        providers = [("CUDAExecutionProvider", {"device_id": int(match.group(1) or 0)})]
    else:
        raise CheckpointError(f"device {device!r} is not understood by the ONNX backend: cpu, cuda or cuda:N")
    names = _provider_names(providers)
    missing = [name for name in names if name not in available]
    if missing:
        raise CheckpointError(
            f"ONNX Runtime execution provider {', '.join(missing)} is not installed here "
            f"(available: {', '.join(available)}); install the matching onnxruntime package "
            "(e.g. onnxruntime-gpu for CUDA) or serve on CPU"
        )
    if "CPUExecutionProvider" not in names:
        providers.append("CPUExecutionProvider")
    return providers


def session_options(
    options: ModelOptions, level: str, threads: int | None = None, spinning: bool | None = None
) -> ort.SessionOptions:
    session = ort.SessionOptions()
    session.intra_op_num_threads = threads or options.inference_threads
    session.inter_op_num_threads = 1
    session.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session.graph_optimization_level = OPTIMIZATION_LEVELS[level]
    spin = "1" if (options.onnx_allow_spinning if spinning is None else spinning) else "0"
    session.add_session_config_entry("session.intra_op.allow_spinning", spin)
    session.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return session


def _cache_path(source: Path) -> Path:
    """Keyed by the export's size and mtime (a new export replaces the file) and the ORT version."""
    stat = source.stat()
    key = f"{stat.st_size}-{stat.st_mtime_ns}-ort{ort.__version__}"
    return source.parent / CACHE_DIR / f"{source.stem}.{key}.extended.onnx"


def _write_cache(source: Path, cache: Path, options: ModelOptions, providers: list[Any]) -> bool:
    try:
        cache.parent.mkdir(exist_ok=True)
        for stale in cache.parent.glob(f"{source.stem}.*.onnx"):
            stale.unlink()
        session = session_options(options, "extended")
        session.optimized_model_filepath = str(cache)
        ort.InferenceSession(str(source), session, providers=providers)
        return True
    except Exception as exc:  # a read-only repository, a full disk: the cache is optional, serve without it
        log.warning(
            "cannot write the ONNX optimization cache in %s (%s); continuing without", cache.parent, exc
        )
        return False


def create_session(
    source: Path,
    options: ModelOptions,
    providers: list[Any],
    threads: int | None = None,
    spinning: bool | None = None,
) -> ort.InferenceSession:
    level = options.onnx_optimization
    cacheable = (
        options.onnx_cache
        and level in ("extended", "all")
        and _provider_names(providers) == ["CPUExecutionProvider"]
    )
    path = source
    if cacheable:
        cache = _cache_path(source)
        if cache.is_file() or _write_cache(source, cache, options, providers):
            path = cache
    session = session_options(options, level, threads, spinning)
    return ort.InferenceSession(str(path), session, providers=providers)


def instance_count(options: ModelOptions, providers: list[Any]) -> int:
    """Concurrent runs: `options.instances`, or on CPU one per inference thread (1 on accelerators)."""
    if options.instances:
        return options.instances
    return options.inference_threads if _provider_names(providers) == ["CPUExecutionProvider"] else 1


class OnnxBackend:
    """Runs an ONNX Runtime session on float32 NCHW batches; returns its named outputs."""

    name = "onnx"

    def __init__(self, session: ort.InferenceSession, artifact: str = "") -> None:
        self.artifact = artifact
        self.session = session
        self.instance_session = session  # load_onnx_backend gives CPU models a fewer-threads one
        self.instances = 1
        self.input_name = session.get_inputs()[0].name
        self.output_names = [output.name for output in session.get_outputs()]

    @property
    def device_type(self) -> str:
        provider = self.session.get_providers()[0]
        return provider.removesuffix("ExecutionProvider").lower()

    @property
    def input_size(self) -> tuple[int, int] | None:
        height, width = self.session.get_inputs()[0].shape[2:]
        return (height, width) if isinstance(height, int) and isinstance(width, int) else None

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(self.session, batch)

    def infer_on_instance(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One of `instances` concurrent runs, on its share of the threads."""
        return self._run(self.instance_session, batch)

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch)})
        return dict(zip(self.output_names, outputs, strict=True))


def load_onnx_backend(model_dir: ModelDir, options: ModelOptions) -> OnnxBackend:
    source = available_export(model_dir, options)
    providers = execution_providers(options.device, options.onnx_providers)
    instances = instance_count(options, providers)
    # With instances, the all-threads session runs only for a request that has the model to itself, so
    # its threads may spin between operators instead of sleeping (docs/performance.md, "Threads").
    lone_spins = instances > 1 or options.onnx_allow_spinning
    backend = OnnxBackend(create_session(source, options, providers, spinning=lone_spins), source.name)
    if is_stale(backend.metadata.get(SOURCE_SHA256), model_dir):
        refresh_stale(source, model_dir, options)
        backend = OnnxBackend(create_session(source, options, providers, spinning=lone_spins), source.name)
    size = Preprocessing.from_hf_config(model_dir.preprocessor_config).fixed_input_size
    if backend.input_size != size:
        raise CheckpointError(
            f"{source} takes {backend.input_size} inputs but the preprocessing makes {size}: export it again"
        )
    if backend.metadata.get(QUANTIZER) == "nncf":
        log.warning(
            "%s was quantized with NNCF for OpenVINO: ONNX Runtime runs its convolutions in float after "
            "dequantizing, slower than fp32 (docs/performance.md#two-quantizers-onnx-runtimes-default-and-nncf-for-openvino). Serve it with --backend openvino, or quantize again with "
            "`mvit export %s --quantize int8 --calibration IMAGES/` for ONNX Runtime",
            source,
            model_dir.path,
        )
    if instances > 1:
        threads = max(1, options.inference_threads // instances)
        backend.instance_session = create_session(source, options, providers, threads)
        backend.instances = instances
    return backend


load = load_onnx_backend
