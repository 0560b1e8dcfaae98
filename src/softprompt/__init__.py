"""softprompt: Prompt Tuning, P-Tuning, Prefix-Tuning and P-Tuning v2 on frozen HuggingFace models."""

from .checkpoint import CheckpointError, export, load, save
from .config import PromptTuningConfig, PTuningConfig, PTuningV2Config, PrefixTuningConfig, TaskConfig
from .model import PromptModel, attach

__all__ = [
    "CheckpointError",
    "PTuningConfig",
    "PTuningV2Config",
    "PrefixTuningConfig",
    "PromptModel",
    "PromptTuningConfig",
    "TaskConfig",
    "attach",
    "export",
    "load",
    "save",
]
