"""The task objects (app/tasks): one per served architecture, each with a Hugging Face route, and the
parameter check they share."""

from __future__ import annotations

import pytest

from app.api.routes import TASK_ROUTES
from app.errors import InvalidInput
from app.nn.configs import ARCHITECTURES
from app.tasks import TASK_BY_CLI_NAME, TASKS
from app.tasks.base import Task


def test_every_architectures_task_is_served_and_has_a_route() -> None:
    assert {architecture.task for architecture in ARCHITECTURES.values()} == set(TASKS) == set(TASK_ROUTES)
    assert all(isinstance(task, Task) and TASKS[task.name] is task for task in TASKS.values())
    assert {task.cli_name for task in TASKS.values()} == set(TASK_BY_CLI_NAME)


class Labels:
    labels = ["cat", "dog"]
    upsample_align_corners = False


@pytest.mark.parametrize("task", TASKS.values(), ids=TASKS)
def test_unknown_parameters_are_named_with_the_accepted_ones(task: Task[object]) -> None:
    with pytest.raises(InvalidInput) as refused:
        task.validate({"top_p": 1, **dict.fromkeys(task.parameters[:1])}, Labels())  # type: ignore[arg-type]
    assert refused.value.message == (
        f"Unknown parameter(s) for {task.name}: top_p. Accepted: {', '.join(task.parameters)}."
    )
