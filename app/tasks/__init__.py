"""The served tasks, one object each (app/tasks/base.py): classification, segmentation, detection.

The network that serves a task is its row in `app.nn.configs.ARCHITECTURES`; its route is the API's
(`app/api/inference.py`).
"""

from __future__ import annotations

from typing import Any

from app.tasks.base import ModelContext, Outputs, Task, TensorOutput
from app.tasks.classification import Classification
from app.tasks.detection import Detection
from app.tasks.segmentation import Segmentation

TASKS: dict[str, Task[Any]] = {task.name: task for task in (Classification(), Segmentation(), Detection())}
TASK_BY_CLI_NAME = {task.cli_name: task for task in TASKS.values()}

__all__ = ["TASKS", "TASK_BY_CLI_NAME", "ModelContext", "Outputs", "Task", "TensorOutput"]
