"""The project's error classes: a `UserError` is something the user can fix (a bad config value, a
missing file, an incompatible checkpoint); its message names the value and the fix, and the CLI
prints it in one line. Anything else (a bug) keeps its traceback.

UserError subclasses ValueError, so `except ValueError` keeps catching the user errors of modules
that raised ValueError before this class existed. Errors of another nature (an OS failure, a run
that diverged) also carry the built-in base they always had.
"""

from __future__ import annotations


class UserError(ValueError):
    """An input the user can fix; the message names the bad value and the fix."""


class ConfigError(UserError):
    """A config file, key or value that cannot be used."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder named in the config or on the command line does not exist."""
