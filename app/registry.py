"""Loaded models and their lifecycle: loading in the background, warm-up, lookup by id or task."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from app.checkpoint import CheckpointError, ModelDir, resolve
from app.config import Settings
from app.errors import ApiError
from app.metrics import Metrics
from app.preprocess import Preprocessing
from app.repository import served_models
from app.tasks import TASKS, TaskSpec
from app.tasks.detection import Detector, SSDConfig
from app.worker import InferenceWorker

log = logging.getLogger(__name__)

# Before any model has loaded there is nothing to measure; this is the guess for `estimated_time`.
DEFAULT_LOAD_ESTIMATE_S = 10.0


class Backend(Protocol):
    name: str
    artifact: str  # the file it runs: model.safetensors, model.onnx, ...
    instances: int  # how many `infer_on_instance` calls may run at once

    @property
    def device_type(self) -> str: ...

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch on all the inference threads."""

    def infer_on_instance(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch on one instance's share of the threads, beside `instances - 1` others."""


@dataclass
class ServedModel:
    id: str
    task: TaskSpec
    model_dir: ModelDir
    backend: Backend
    preprocessing: Preprocessing
    labels: list[str]
    width: float
    min_decode_size: tuple[int, int] | None = None  # how far a JPEG may be reduced while decoding
    worker: InferenceWorker | None = None

    @cached_property
    def detector(self) -> Detector:
        """SSD settings and the anchors of this model's input size (detection models only)."""
        if self.input_size is None:
            raise CheckpointError(f"{self.id}: detection needs a fixed input size")
        return Detector.for_input(SSDConfig.from_dict(self.model_dir.config), *self.input_size)

    @property
    def upsample_align_corners(self) -> bool:
        """cvnets-converted segmentation models upsample logits with align_corners=True."""
        return bool(self.model_dir.manifest.get("upsample_align_corners", False))

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.preprocessing.fixed_input_size

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task.name,
            "route": self.task.route,
            "backend": self.backend.name,
            "artifact": self.backend.artifact,
            "device": self.backend.device_type,
            "width_multiplier": self.width,
            "input_size": list(self.input_size) if self.input_size else None,
            "max_batch_size": self.worker.max_batch_size if self.worker else None,
            "max_queue_delay_ms": self.worker.max_queue_delay_ms if self.worker else None,
            "max_queue_size": self.worker.max_queue_size if self.worker else None,
            "instances": self.backend.instances,
            "num_labels": len(self.labels),
            "source": self.model_dir.source,
            "path": str(self.model_dir.path),
            "random_weights": self.model_dir.random_weights,
            "preprocessing": self.preprocessing.describe(),
        }


def load_backend(model_dir: ModelDir, settings: Settings) -> Backend:
    try:
        if settings.backend == "onnx":
            from app.backends.onnx_backend import load_onnx_backend

            return load_onnx_backend(model_dir, settings)
        from app.backends.torch_backend import load_torch_backend, set_threads
    except ImportError as exc:
        extra = "onnx" if settings.backend == "onnx" else "torch"
        raise CheckpointError(
            f"the {settings.backend} backend needs {exc.name or 'a missing package'}, which is not installed: "
            f"`pip install .[{extra}]`, or choose the other backend (--backend / MVIT_BACKEND)"
        ) from None
    set_threads(settings.inference_threads)
    return load_torch_backend(model_dir, settings.device)


def load_model(
    source: str,
    settings: Settings,
    backend_loader: Callable[[ModelDir, Settings], Backend] = load_backend,
) -> ServedModel:
    """Resolve, load and warm up one model (blocking). The caller attaches a worker to serve it."""
    model_dir = resolve(source, settings.model_repository, settings.hub_revision)
    if model_dir.task not in TASKS:
        raise CheckpointError(f"{model_dir.path}: task {model_dir.task!r} is not served by this version")
    preprocessing = Preprocessing.from_hf_config(model_dir.preprocessor_config)
    if preprocessing.fixed_input_size is None:
        raise CheckpointError(f"{model_dir.path}: preprocessing must produce a fixed input size (crop)")
    labels = model_dir.labels
    backend = backend_loader(model_dir, settings)
    height, width = preprocessing.fixed_input_size
    warm_up = np.zeros((1, 3, height, width), dtype=np.float32)  # the first call of a session allocates
    backend.infer(warm_up)
    if backend.instances > 1:
        backend.infer_on_instance(warm_up)
    return ServedModel(
        id=model_dir.model_id,
        task=TASKS[model_dir.task],
        model_dir=model_dir,
        backend=backend,
        preprocessing=preprocessing,
        labels=labels,
        width=float(model_dir.config.get("width_multiplier", 1.0)),
        min_decode_size=preprocessing.min_decode_size(settings.jpeg_reduce_gap),
    )


class ModelManager:
    """Owns the served models. Loading runs in the background so /health answers at once."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        backend_loader: Callable[[ModelDir, Settings], Backend] = load_backend,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._backend_loader = backend_loader
        self.models: dict[str, ServedModel] = {}
        self.expected = 1  # how many models are configured; known once models.yaml has been read
        self.loading = True
        self.error: str | None = None
        self._load_started = time.monotonic()
        self._load_times: list[float] = []

    @property
    def ready(self) -> bool:
        return not self.loading and self.error is None

    def estimated_time(self) -> float:
        remaining = max(1, self.expected - len(self.models))
        per_model = max(self._load_times) if self._load_times else DEFAULT_LOAD_ESTIMATE_S
        elapsed_on_current = time.monotonic() - self._load_started - sum(self._load_times)
        return round(max(1.0, remaining * per_model - elapsed_on_current), 1)

    def _loading_error(self, what: str) -> ApiError:
        estimate = self.estimated_time()
        return ApiError(
            503,
            f"Model {what} is currently loading",
            headers={"Retry-After": str(max(1, round(estimate)))},
            extra={"estimated_time": estimate},
        )

    def get(self, model_id: str) -> ServedModel:
        if model_id in self.models:
            return self.models[model_id]
        if self.loading:
            raise self._loading_error(model_id)
        raise ApiError(
            404, f"Model {model_id!r} is not served here. Served: {', '.join(self.models) or 'none'}."
        )

    def for_task(self, task: str) -> ServedModel:
        for model in self.models.values():
            if model.task.name == task:
                return model
        if self.loading:
            raise self._loading_error(f"for {task}")
        raise ApiError(404, f"No {task} model is served here. Served: {', '.join(self.models) or 'none'}.")

    async def load_all(self) -> None:
        """Load every configured model in order; stop at the first failure and keep its message."""
        self._load_started = time.monotonic()
        try:
            entries = served_models(self.settings)
            self.expected = len(entries)
            for entry in entries:
                started = time.monotonic()
                settings = entry.settings(self.settings)
                model = await asyncio.to_thread(load_model, entry.name, settings, self._backend_loader)
                if model.id in self.models:
                    raise CheckpointError(f"two configured models have the id {model.id!r}")
                model.worker = InferenceWorker(
                    model.id,
                    model.backend.infer,
                    max_batch_size=settings.max_batch_size,
                    max_queue_delay_ms=settings.max_queue_delay_ms,
                    max_queue_size=settings.max_queue_size,
                    on_batch=self.metrics.batch_size.labels(model.id).observe,
                    instances=model.backend.instances,
                    infer_on_instance=model.backend.infer_on_instance,
                )
                self.metrics.pending.labels(model.id).set_function(lambda w=model.worker: w.pending)
                model.worker.start()
                self.models[model.id] = model
                task, backend, model_dir, width = model.task, model.backend, model.model_dir, model.width
                seconds = time.monotonic() - started
                self._load_times.append(seconds)
                self.metrics.model_load_seconds.labels(model.id).set(seconds)
                self.metrics.model_info.labels(
                    model=model.id,
                    task=task.name,
                    backend=backend.name,
                    device=backend.device_type,
                    width=str(width),
                    input_size="x".join(map(str, model.input_size or ())),
                    random_weights=str(model_dir.random_weights).lower(),
                ).set(1)
                log.info(
                    "model %s ready: %s, %s on %s, width %s, loaded in %.2fs%s",
                    model.id,
                    task.name,
                    backend.name,
                    backend.device_type,
                    width,
                    seconds,
                    " (RANDOM demo weights)" if model_dir.random_weights else "",
                )
        except CheckpointError as exc:
            self.error = str(exc)
        except Exception as exc:
            log.exception("model loading failed")
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.loading = False
        if self.error:
            log.error("model loading failed: %s", self.error)
        else:
            self.metrics.models_ready.set(1)

    async def close(self) -> None:
        for model in self.models.values():
            await model.worker.stop()
