"""P-Tuning v2 (Liu et al. 2022): deep prompts in every layer (or a range) of an encoder.

The same key/value prefixes as Prefix-Tuning, by default as a plain table with dropout and without
reparameterization, optionally in layers [start, end) only, trained together with a fresh linear
head on [CLS] (sequence classification) or on every token (sequence labelling, labels on the first
sub-token of each word).
"""

from __future__ import annotations

from .._task import Base, Task
from ..config import PTuningV2Config
from .prefix_tuning import deep_prompt


def build(config: PTuningV2Config, base: Base) -> Task:
    return Task(config, base, deep_prompt=deep_prompt(config, base, config.layers))
