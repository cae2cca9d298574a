"""One family of errors for problems a user can fix: a bad setting, file, model, adapter or checkpoint.

Every message names the culprit (config key or file) and says what is allowed or what to do. Entry points print a
`TLIError` as one line, `error: <message>`, and exit with status 2; anything else is a bug and keeps its traceback.
The subclasses subclass ValueError where the culprit is a value, so callers may catch either.
"""

from __future__ import annotations


class TLIError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ConfigError(TLIError, ValueError):
    """A config value outside what is allowed (names the key, the value and the allowed values)."""


class DataError(TLIError, ValueError):
    """A lexicon or text file that cannot be used (names the file, the entry and the problem)."""


class ModelError(TLIError, ValueError):
    """A model that cannot be loaded as asked (names the path or hub id and what to do)."""


class AdapterError(TLIError, ValueError):
    """An adapter directory that is missing, damaged, or does not fit the loaded model."""


class CheckpointError(TLIError):
    """A training checkpoint that is missing, damaged or written by another run's settings."""


class TrainingError(TLIError):
    """Training cannot go on (e.g. a non-finite loss); the checkpoints written before it are intact."""


class RunDirError(TLIError):
    """The run directory is in use by another live run, or cannot be written."""
