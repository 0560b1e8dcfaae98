"""The method registry: a method name -> the function that assembles its parts.

Every builder has one signature, ``build(config, base) -> Task``, so picking a method is a dict
lookup. ``base`` is the :class:`softprompt._task.Base` that describes the frozen model.
"""

from __future__ import annotations

from collections.abc import Callable

from .._task import Base, Task
from ..config import TaskConfig
from . import p_tuning, p_tuning_v2, prefix_tuning, prompt_tuning

METHODS: dict[str, Callable[[TaskConfig, Base], Task]] = {
    "prompt-tuning": prompt_tuning.build,
    "p-tuning": p_tuning.build,
    "prefix-tuning": prefix_tuning.build,
    "p-tuning-v2": p_tuning_v2.build,
}
