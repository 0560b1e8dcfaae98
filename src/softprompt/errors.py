"""The errors softprompt raises for input a user can fix: bad data, options, models or run folders.

Every one of them derives from :class:`UserError`, so the command line can turn exactly these into
one line on stderr and exit code 2, while a bug anywhere else still shows its traceback. They also
derive from ``ValueError``, which is what code written against earlier versions catches.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input that cannot be used as given; the message says what is wrong and how to fix it."""


class ConfigError(UserError):
    """A prompt-method config whose values do not fit together."""


class TrainError(UserError):
    """Train arguments that cannot work together; the message says which and what to change."""


class CheckpointError(UserError):
    """A prompt, checkpoint or run folder that is missing, damaged or belongs to another model."""


__all__ = ["CheckpointError", "ConfigError", "TrainError", "UserError"]
