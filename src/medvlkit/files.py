"""What identifies a file's contents cheaply: its path, size and modification time (the embedding cache's keys and
models' fingerprints both use it, so a changed file behind the same path is never taken for the old one); and where
medvlkit keeps what it derives from files (its cache folder)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$MEDVLKIT_CACHE`` or ``~/.cache/medvlkit``."""
    return Path(os.environ.get("MEDVLKIT_CACHE", Path.home() / ".cache" / "medvlkit")).expanduser()


def stat_fingerprint(path: str, real: str | None = None) -> str:
    """``path|size|mtime_ns`` of the file ``real`` (default ``path``), or ``path|missing``."""
    try:
        st = os.stat(real if real is not None else path)
    except OSError:
        return f"{path}|missing"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"
