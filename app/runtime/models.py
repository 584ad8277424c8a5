"""Loaded models and their lifecycle: loading in the background, warm-up, lookup by id or task."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from app.backends import Backend, load_backend
from app.config import ModelOptions, ServerSettings
from app.errors import CheckpointError, ModelLoading, ModelNotFound, shown
from app.intake.preprocess import Preprocessing
from app.intake.profiles import Chosen, Profile, choose
from app.metrics import Metrics
from app.nn.configs import SSDConfig
from app.repository import ModelDir, resolve
from app.repository.models_yaml import ModelEntry, served_models
from app.runtime.apply_tuning import Tuning, apply_tuning
from app.runtime.batcher import Batcher
from app.runtime.measure_tuning import TuningStopped, tune_at_start
from app.tasks import TASKS, Task
from app.tasks.detection import Detector

log = logging.getLogger(__name__)

# Before any model has loaded there is nothing to measure; this is the guess for `estimated_time`.
DEFAULT_LOAD_ESTIMATE_S = 10.0


@dataclass
class ServedModel:
    """A loaded, warmed-up model with its batcher; `ModelManager` starts the batcher on the event loop."""

    id: str
    task: Task
    model_dir: ModelDir
    backend: Backend
    preprocessing: Preprocessing
    profile: Profile
    profile_reason: str
    tuning: Tuning
    labels: list[str]
    width: float
    batcher: Batcher
    min_decode_size: tuple[int, int] | None = None  # how far a JPEG may be reduced while decoding

    @cached_property
    def detector(self) -> Detector:
        """SSD settings and the anchors of this model's input size (detection models only; every served
        model has a fixed input size, `load_model` sees to it)."""
        height, width = self.preprocessing.fixed_input_size or (0, 0)
        return Detector.for_input(SSDConfig.from_dict(self.model_dir.config), height, width)

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
            "backend": self.backend.name,
            "artifact": self.backend.artifact,
            "precision": self.tuning.key.precision,
            "device": self.backend.device_type,
            "width_multiplier": self.width,
            "input_size": list(self.input_size) if self.input_size else None,
            "max_batch_size": self.batcher.max_batch_size,
            "max_queue_delay_ms": self.batcher.max_queue_delay_ms,
            "max_queue_size": self.batcher.max_queue_size,
            "instances": self.backend.instances,
            "num_labels": len(self.labels),
            "source": self.model_dir.source,
            "path": str(self.model_dir.path),
            "random_weights": self.model_dir.random_weights,
            "tuning": self.tuning.describe(self.model_dir),
            "training_pipeline": self.model_dir.training_pipeline,
            "preprocessing": {
                "profile": self.profile,
                "reason": self.profile_reason,
                **self.preprocessing.describe(),
            },
        }


def preprocessing_for(model_dir: ModelDir, profile: Literal["auto", "trained", "hf"]) -> Chosen:
    """The preprocessing `profile` gives this folder; CheckpointError where it has no fixed input size."""
    hf_preprocessing = Preprocessing.from_hf_config(model_dir.preprocessor_config)
    if hf_preprocessing.fixed_input_size is None:
        raise CheckpointError(f"{model_dir.path}: preprocessing must produce a fixed input size (crop)")
    try:
        return choose(
            profile,
            hf_preprocessing,
            hf_preprocessing.fixed_input_size,
            model_dir.task,
            model_dir.training_pipeline,
            model_dir.recorded_profile,
        )
    except ValueError as exc:
        raise CheckpointError(f"{model_dir.path}: {exc}") from None


def load_model(
    model_dir: ModelDir,
    options: ModelOptions,
    backend_loader: Callable[[ModelDir, ModelOptions], Backend] = load_backend,
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
) -> ServedModel:
    """Load and warm up one model (blocking), with a batcher configured by `options` and this machine's
    tuning record; `stop` ends a tuning at start early (TuningStopped)."""
    if model_dir.task not in TASKS:
        raise CheckpointError(f"{model_dir.path}: task {model_dir.task!r} is not served by this version")
    chosen = preprocessing_for(model_dir, options.preprocessing)
    preprocessing = chosen.preprocessing
    options, tuning = apply_tuning(model_dir, options)
    if tuning.record is None and options.tune_at_start_s > 0:
        size = preprocessing.fixed_input_size
        options, tuning = tune_at_start(model_dir, options, size, stop, tuning.outdated)
    backend = backend_loader(model_dir, options)
    height, width = preprocessing.fixed_input_size
    warm_up = np.zeros((1, 3, height, width), dtype=np.float32)  # the first call of a session allocates
    backend.infer(warm_up)
    if backend.instances > 1:
        backend.infer_on_instance(warm_up)
    batcher = Batcher(
        model_dir.model_id,
        backend.infer,
        max_batch_size=options.max_batch_size,
        max_queue_delay_ms=options.max_queue_delay_ms,
        max_queue_size=options.max_queue_size,
        on_batch=metrics.batch_size.labels(model_dir.model_id).observe if metrics else None,
        on_death=(lambda _: metrics.batcher_failures.labels(model_dir.model_id).inc()) if metrics else None,
        on_pending=metrics.pending.labels(model_dir.model_id).set if metrics else None,
        instances=backend.instances,
        infer_on_instance=backend.infer_on_instance,
    )
    return ServedModel(
        id=model_dir.model_id,
        task=TASKS[model_dir.task],
        model_dir=model_dir,
        backend=backend,
        preprocessing=preprocessing,
        profile=chosen.profile,
        profile_reason=chosen.reason,
        tuning=tuning,
        labels=model_dir.labels,
        width=float(model_dir.config.get("width_multiplier", 1.0)),
        batcher=batcher,
        min_decode_size=preprocessing.min_decode_size(options.jpeg_reduce_gap),
    )


def load_source(source: str, settings: ServerSettings) -> ServedModel:
    """One model (a folder, a name in the repository, a fetched Hub id) loaded as `mvit serve` loads it with
    `settings`, less what a models.yaml entry would override: for tools and benchmarks."""
    return load_model(resolve(source, settings.model_repository), settings.model_options())


class ModelManager:
    """Owns the served models. Loading runs in the background so /health answers at once."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        backend_loader: Callable[[ModelDir, ModelOptions], Backend] = load_backend,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._backend_loader = backend_loader
        self.models: dict[str, ServedModel] = {}
        self.expected = 1  # how many models are configured; known once models.yaml has been read
        self.loading = True
        self.loaded = asyncio.Event()  # set once loading has ended, ready or failed (`error`)
        self.error: str | None = None
        self._load_started = time.monotonic()
        self._load_times: list[float] = []
        # Set on close: a load still measuring in its thread (tuning at start) stops instead of holding
        # the process up to its budget.
        self._stopping = threading.Event()

    @property
    def ready(self) -> bool:
        return not self.loading and self.error is None

    def failures(self) -> dict[str, str]:
        """Models whose batcher has died, with why: they answer 503 until the service restarts."""
        return {m.id: m.batcher.failure for m in self.models.values() if m.batcher.failure is not None}

    def estimated_time(self) -> float:
        remaining = max(1, self.expected - len(self.models))
        per_model = (
            max(self._load_times)
            if self._load_times
            else DEFAULT_LOAD_ESTIMATE_S + self.settings.tune_at_start_s  # if the first one has no record
        )
        elapsed_on_current = time.monotonic() - self._load_started - sum(self._load_times)
        return round(max(1.0, remaining * per_model - elapsed_on_current), 1)

    def loading_error(self, what: str) -> ModelLoading:
        return ModelLoading(f"Model {what} is currently loading", self.estimated_time())

    def get(self, model_id: str) -> ServedModel:
        if model_id in self.models:
            return self.models[model_id]
        if self.loading:
            raise self.loading_error(model_id)
        raise ModelNotFound(
            f"Model {shown(model_id)} is not served here. Served: {', '.join(self.models) or 'none'}."
        )

    def for_task(self, task: str) -> ServedModel:
        for model in self.models.values():
            if model.task.name == task:
                return model
        if self.loading:
            raise self.loading_error(f"for {task}")
        raise ModelNotFound(f"No {task} model is served here. Served: {', '.join(self.models) or 'none'}.")

    def _load(self, entry: ModelEntry) -> ServedModel:
        model_dir = resolve(entry.name, self.settings.model_repository)
        options = entry.options(self.settings.model_options())
        return load_model(model_dir, options, self._backend_loader, self.metrics, self._stopping)

    async def load_all(self) -> None:
        """Load every configured model in order; stop at the first failure and keep its message."""
        self._load_started = time.monotonic()
        try:
            entries = served_models(self.settings)
            self.expected = len(entries)
            for entry in entries:
                started = time.monotonic()
                model = await asyncio.to_thread(self._load, entry)
                if model.id in self.models:
                    raise CheckpointError(f"two configured models have the id {model.id!r}")
                self.metrics.pending.labels(model.id).set(0)
                self.metrics.batcher_failures.labels(model.id)  # a 0 sample from the start, for increase()
                model.batcher.start()
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
                if model.tuning.warning:
                    log.warning("model %s: %s", model.id, model.tuning.warning)
                log.info(
                    "model %s ready: %s, %s on %s, width %s, preprocessing %s (%s), %s, loaded in %.2fs%s",
                    model.id,
                    task.name,
                    backend.name,
                    backend.device_type,
                    width,
                    model.profile,
                    model.profile_reason,
                    model.tuning.summary(model_dir),
                    seconds,
                    " (RANDOM demo weights)" if model_dir.random_weights else "",
                )
        except CheckpointError as exc:
            self.error = str(exc)
        except TuningStopped:
            self.error = "shut down while a model was being tuned"
        except Exception as exc:
            log.exception("model loading failed")
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.loading = False
            self.loaded.set()
        if self.error:
            log.error("model loading failed: %s", self.error)
        else:
            self.metrics.models_ready.set(1)

    async def close(self) -> None:
        self._stopping.set()
        for model in self.models.values():
            await model.batcher.stop()
