"""Which datasets have an audit on this machine (``$MEDVLKIT_CACHE/audits/``), so ``eval`` and ``benchmark`` can say
when they score data whose audit found cross-split leaks without applying it (``--exclude``)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _entry(data: str | Path, cache_dir: str | None = None) -> Path:
    from medvlkit.files import default_cache_dir

    key = hashlib.sha1(str(Path(data).expanduser().resolve()).encode()).hexdigest()[:20]
    return Path(cache_dir or default_cache_dir()) / "audits" / f"{key}.json"


def register_audit(data: str | Path, folder: Path, summary: dict, cache_dir: str | None = None) -> None:
    """Remember the audit of ``data`` written to ``folder`` (the newest one wins)."""
    path = _entry(data, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"data": str(Path(data).resolve()), "folder": str(Path(folder).resolve()),
                                    "summary": summary}))
    except OSError as err:  # a read-only cache: the audit itself is written; only the reminder is lost
        logger.warning("could not record the audit in %s (%s)", path, err)


def warn_if_unapplied(data: str | Path, exclude: str | None, cache_dir: str | None = None) -> str | None:
    """The warning to give (and logged) when ``data`` has an audit with cross-split findings and no ``exclude`` was
    passed; None otherwise."""
    if exclude:
        return None
    try:
        known = json.loads(_entry(data, cache_dir).read_text())
    except (OSError, ValueError):
        return None
    s = known.get("summary") or {}
    if not (s.get("cross_split_pairs") or s.get("leaking_groups")):
        return None
    message = (f"{data}: its audit ({known.get('folder')}) found {s.get('cross_split_pairs', 0)} image pairs across "
               f"splits and {s.get('leaking_groups', 0)} patients in two splits, not applied here: test numbers may "
               f"be inflated. Pass --exclude {known.get('folder')} to leave those training images out")
    logger.warning(message)
    return message
