"""The files an audit writes: ``audit.json`` (everything), one CSV per finding kind, and ``result.json`` (the
counts as metrics, so ``report`` shows an audit beside other runs and draws its pairs as thumbnails)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.exclusions import AUDIT_FILE

HEADLINE = ["cross_split_pairs", "within_split_pairs", "label_conflicts", "leaking_groups", "excluded_images",
            "shortcut_flagged"]


def write_audit(audit: dict, out_dir: Path, dataset: ImageDataset, model=None) -> None:
    """Write every file of an audit into ``out_dir`` (see the module docstring)."""
    from medvlkit.engine.identity import dataset_identity, identity_record
    from medvlkit.engine.results import write_result

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    audit["identity"] = identity_record("audit", data=dataset_identity(dataset), config=audit["config"],
                                        model=None if model is None else model.fingerprint())
    dump_json(out_dir / AUDIT_FILE, audit)
    pairs = audit["pairs"]
    tables = {"exact_pairs": [p for p in pairs if p["kind"] == "exact"],
              "near_pairs": [p for p in pairs if p["kind"] == "near"],
              "label_conflicts": [p for p in pairs if p["label_conflict"]],
              "plain_pairs": audit.get("plain_pairs", []),
              "group_leaks": [{"group": g["group"], "splits": g["splits"],
                               "images": sum(len(v) for v in g["images"].values())} for g in audit["group_leaks"]],
              "families": [{"family": f["family"], "size": f["size"], "split": split, "file": file}
                           for f in audit["families"] for split, files in f["splits"].items() for file in files],
              "exclude": audit["exclude"], "unreadable": audit["unreadable"],
              "balance": [{"split": s} | counts for s, counts in audit["balance"].items()],
              "shortcuts": _shortcut_rows(audit["shortcuts"])}
    if audit.get("seen_by_model"):
        tables["seen_by_model"] = audit["seen_by_model"].get("files", [])
    for name, rows in tables.items():
        write_csv(out_dir / f"{name}.csv", rows)
    write_result(out_dir, dataset=audit["dataset"], model=model.name if model is not None else "none",
                 task="audit", metrics=audit["summary"], config=audit["config"], headline=HEADLINE,
                 n_skipped=len(audit["unreadable"]), extra={"audit": AUDIT_FILE, "identity": audit["identity"]})


def _shortcut_rows(shortcuts: dict | None) -> list[dict]:
    rows = []
    for features in ("image_properties", "file_name_pattern", "model_embedding"):
        for cls, v in ((shortcuts or {}).get(features) or {}).items():
            rows.append({"features": features, "class": cls, "auroc": v["auroc"], "ci_low": v["ci"][0],
                         "ci_high": v["ci"][1], "n": v["n"]})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts as a CSV (lists joined with ``|``)."""
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["none"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: "|".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in r.items()})


def read_audit(folder: Path) -> dict:
    """An audit folder's ``audit.json``, checked (as :func:`medvlkit.data.exclusions.read_exclusions` checks it).

    Raises:
        MedvlkitError: not an audit folder, or a damaged one.
    """
    from medvlkit.artifacts import json_field, read_json_object
    from medvlkit.data.exclusions import read_exclusions

    read_exclusions(folder)
    path = Path(folder) / AUDIT_FILE
    audit = read_json_object(path, "audit")
    json_field(audit, "summary", dict, path, "audit")
    return audit


def dump_json(path: Path, obj: dict) -> None:
    """``obj`` as indented JSON (numpy scalars as floats)."""
    path.write_text(json.dumps(obj, indent=1, default=float) + "\n")
