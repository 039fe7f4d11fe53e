"""Error types. Anything derived from :class:`NetsurgeryError` is a user mistake (bad file,
bad option) and is shown by the CLI as one or two lines, exit code 2, without a traceback."""
from __future__ import annotations


class NetsurgeryError(Exception):
    """Base class of every error caused by user input."""


class CfgError(NetsurgeryError):
    """A problem in a .cfg file, located by file and line."""

    def __init__(self, path: str | None, line: int | None, message: str):
        self.path = path
        self.line = line
        self.message = message
        where = f"{path or '<cfg>'}:{line}" if line is not None else f"{path or '<cfg>'}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # copy and pickle (a Cfg keeps its warnings as CfgErrors)
        return (type(self), (self.path, self.line, self.message))


class CfgWarning(UserWarning):
    """Something in a .cfg file that Darknet accepts but that is probably not meant (a key it
    does not read, surplus anchors ...). The text starts with ``file:line:``. Reading with
    ``strict=True`` (CLI ``--strict``) turns each into a :class:`CfgError`."""


class WeightsError(NetsurgeryError):
    """A problem in a .weights file (header, size, layer that does not fit)."""


class DataError(NetsurgeryError):
    """A problem in a dataset (.data file, image list, label file, image)."""


class UsageError(NetsurgeryError):
    """Options that do not fit together, outputs that would overwrite inputs, and the like."""
