"""The classifier tasks, in one map: command name -> checkpoint task, default labels, input shape.

`train classifier|nli`, `evaluate`, the checkpoint's config.json "task" and `export
classifier|nli` all read this map, so a task is named and described in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str  # the command's word: `train classifier`, `export nli`
    checkpoint_task: str  # config.json "task", also the model repository's task
    labels: tuple[str, ...]  # label names in output order when the user gives none
    pairs: bool  # premise/hypothesis pairs rather than single texts


TASKS: dict[str, Task] = {
    # SST-2's 0/1 labels map by index onto these names.
    "classifier": Task("classifier", "text-classification", ("negative", "positive"), False),
    "nli": Task(
        "nli", "text-pair-classification", ("entailment", "neutral", "contradiction"), True
    ),
}


def task_of_checkpoint(checkpoint_task: str) -> Task:
    """The Task whose config.json name is `checkpoint_task`."""
    for task in TASKS.values():
        if task.checkpoint_task == checkpoint_task:
            return task
    known = [t.checkpoint_task for t in TASKS.values()]
    raise ValueError(f"unknown classifier task {checkpoint_task!r} (expected one of {known})")
