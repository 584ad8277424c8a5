"""Where each task is served over HTTP: the Hugging Face routes, and a model's description with its route."""

from __future__ import annotations

from typing import Any

from app.errors import InvalidInput
from app.runtime.models import ModelManager, ServedModel

# By the task's Hugging Face pipeline tag (a key of app.tasks.TASKS).
TASK_ROUTES = {
    "image-classification": "/classify",
    "image-segmentation": "/segment",
    "object-detection": "/detect",
}


def description(model: ServedModel) -> dict[str, Any]:
    """`ServedModel.describe()` with the model's route, as /models and the /info routes show it."""
    described = model.describe()
    task = described.pop("task")
    return {"id": described.pop("id"), "task": task, "route": TASK_ROUTES[task], **described}


def only_model(manager: ModelManager) -> ServedModel:
    """The one served model, for the endpoint root (`POST /`), as Inference Endpoints serve it."""
    if manager.loading:
        raise manager.loading_error("for /")
    if len(manager.models) == 1:
        return next(iter(manager.models.values()))
    served = ", ".join(f"{TASK_ROUTES[m.task.name]} ({m.id})" for m in manager.models.values()) or "none"
    raise InvalidInput(
        f"{len(manager.models)} models are served here, so POST / does not know which to run: "
        f"post to a task route or to /models/<id>. Served: {served}."
    )
