"""Errors caused by the user's input (a config, a data file, a checkpoint, a tensor's shape).

The CLI prints any :class:`ZooError` as one line, ``error: <message>``, and exits with status 2;
every other exception is a bug and keeps its traceback. The subclasses also derive from the
built-in exception a caller would expect, so ``except FileNotFoundError`` keeps working.
"""


class ZooError(Exception):
    """Base class: the message names the bad value and what was expected."""


class ConfigError(ZooError, ValueError):
    """A config or argument value is invalid."""


class MissingDataError(ZooError, FileNotFoundError):
    """A data file the DataModule needs is not under ``data_dir``."""


class MalformedDataError(ZooError, ValueError):
    """A data file exists but does not have the expected format."""


class ShapeError(ZooError, ValueError):
    """A tensor does not have the shape a model expects."""


class CheckpointError(ZooError, ValueError):
    """A checkpoint file is missing, corrupt, tampered with or not a checkpoint at all."""


class UnknownPretrainedError(ZooError, KeyError):
    """A pretrained name is not in the manifest.

    ``KeyError`` would quote its message with repr(); keep it readable.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NonFiniteError(ZooError, FloatingPointError):
    """Training produced a NaN or infinite loss (or would save such a model)."""
