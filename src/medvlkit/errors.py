"""Errors that mean "the user asked for something that cannot work" (exit code 2 in the CLI)."""

from __future__ import annotations

import contextlib


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty message line, without terminal colour codes: for one-line errors that quote
    what a library said."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":") and len(lines) > 1:  # "Error(s) in loading state_dict for X:" says nothing on its own
        line = f"{line} {lines[1]}"
    return f"{type(err).__name__}: {line[:limit]}" if line else type(err).__name__


@contextlib.contextmanager
def loading_weights(what: str, expected: str):
    """Turn what a weights loader raises into one-line errors: a pickle that ``weights_only`` refuses is named as
    such (unpickling it could run code), anything else says what was ``expected`` of ``what``."""
    import pickle

    try:
        yield
    except pickle.UnpicklingError:
        raise MedvlkitError(f"{what} refused: it holds Python objects besides tensors, and unpickling them could run "
                            "code. Re-save the weights on a trusted machine as safetensors (or a plain state dict)") \
            from None
    except MedvlkitError:
        raise
    except Exception as err:  # noqa: BLE001 - loaders raise many types for missing or damaged files
        raise MedvlkitError(f"{what} could not be loaded ({first_line(err)}); {expected}") from None


class MedvlkitError(Exception):
    """Bad input: a missing file, a malformed option, an unknown name.

    The message is one line that names the offending file or option and says how to fix it.
    The CLI prints it without a traceback and exits with code 2.
    """


class ImageReadError(MedvlkitError):
    """An image file could not be read or decoded (the path is in the message)."""

    def __init__(self, path: str, reason: str) -> None:
        reason = " ".join(str(reason).split())  # one line, whatever the decoder printed
        super().__init__(f"cannot read image '{path}': {reason}")
        self.path = path
        self.reason = reason


class ImageTooLargeError(ImageReadError):
    """An image over the pixel limit (a decompression-bomb guard): refused before it is decoded whole."""


class NoSplitsError(MedvlkitError):
    """A split was asked for, but the data has no splits (a CSV without a ``split`` column...)."""
