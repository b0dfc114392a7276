"""Tasks: data loading, template, split and metrics. Presets register themselves by name."""

from domainlm.tasks.base import Example, TaskData, TaskSpec, get_task, register_task

__all__ = ["Example", "TaskData", "TaskSpec", "get_task", "register_task"]
