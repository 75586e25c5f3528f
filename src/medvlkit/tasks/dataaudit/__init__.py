"""``medvlkit audit``: duplicates and near-duplicates within and across splits, label conflicts, patient leakage,
shortcuts and class balance, found before any number is reported (see :mod:`medvlkit.tasks.dataaudit.run`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvlkit.tasks.dataaudit.report import read_audit
from medvlkit.tasks.dataaudit.run import AuditConfig, run_audit

if TYPE_CHECKING:
    from medvlkit.models.base import ModelBase


__all__ = ["AuditConfig", "audit", "read_audit", "run_audit"]


def audit(data: str | Path, out_dir: str | Path, model: ModelBase | None = None, **options: Any) -> dict[str, Any]:
    """Audit a dataset (any format medvlkit reads) and write ``audit.json``, a CSV per finding kind and
    ``result.json`` into ``out_dir``. ``model``: a loaded model or a spec (its embeddings propose near-duplicates and
    enter the shortcut check; its training manifest is compared with the data). ``options``: :class:`AuditConfig`
    fields (``splits``, ``group_pattern``, ``near_threshold``, ``augmented``...). Returns the audit."""
    spec = model if isinstance(model, str) else None
    cfg = AuditConfig(str(data), model=spec, **options)
    return run_audit(cfg, Path(out_dir), model=None if spec else model)
