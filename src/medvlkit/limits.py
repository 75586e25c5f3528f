"""Limits every layer reads: the pixel count an image may have (``MEDVLKIT_MAX_PIXELS``). Readers
(:mod:`medvlkit.data.io`) and models' preprocessing (:mod:`medvlkit.models.base`) both obey it."""

from __future__ import annotations

import os

DEFAULT_MAX_PIXELS = 100_000_000  # a 10k x 10k image; mammograms are ~ 4k x 6k


def max_pixels() -> int:
    """The pixel-count limit: ``$MEDVLKIT_MAX_PIXELS`` or 100 million."""
    return int(os.environ.get("MEDVLKIT_MAX_PIXELS", DEFAULT_MAX_PIXELS))
