"""The engine's tasks, one module each, and the registry the task-free code looks them up in: by name
(a bundle's manifest, a job's result) or by the type of labelled items a labelling rule made."""

from __future__ import annotations

from core.engine.items import LabelledItems
from core.engine.tasks.base import Correction, Doubt, Grid, Interpretation, Prediction, Scores, Task
from core.engine.tasks.classification import ClassificationTask
from core.engine.tasks.multilabel import MultiLabelTask
from core.engine.tasks.points import PointsTask
from core.engine.tasks.segmentation import SegmentationTask
from core.engine.tasks.values import ValuesTask

TASKS: dict[str, Task] = {
    t.name: t for t in (ClassificationTask(), MultiLabelTask(), PointsTask(), ValuesTask(), SegmentationTask())
}


def get_task(name: str) -> Task:
    """The task of this name (ValueError naming the known ones when there is none)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task '{name}' is not one this fitcycle has ({', '.join(TASKS)})") from None


def task_of(items: LabelledItems) -> Task:
    """The task that learns from these items (by their exact type: multi-label items are not classification's)."""
    for task in TASKS.values():
        if type(items) is task.items_type:
            return task
    raise TypeError(f"no task learns from {type(items).__name__}")


__all__ = [
    "TASKS",
    "Correction",
    "Doubt",
    "Grid",
    "Interpretation",
    "Prediction",
    "Scores",
    "Task",
    "get_task",
    "task_of",
]
