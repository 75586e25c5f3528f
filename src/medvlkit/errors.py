"""Errors that mean "the user asked for something that cannot work" (exit code 2 in the CLI)."""

from __future__ import annotations


class MedvlkitError(Exception):
    """Bad input: a missing file, a malformed option, an unknown name.

    The message is one line that names the offending file or option and says how to fix it.
    The CLI prints it without a traceback and exits with code 2.
    """


class ImageReadError(MedvlkitError):
    """An image file could not be read or decoded (the path is in the message)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image '{path}': {reason}")
        self.path = path
        self.reason = reason


class NoSplitsError(MedvlkitError):
    """A split was asked for, but the data has no splits (a CSV without a ``split`` column...)."""
