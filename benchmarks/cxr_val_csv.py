"""Write the patient-level validation split of chest_xray_pneumonia/train as a label CSV.

Kermany's data has only train and test. `medvlkit pretrain` keeps 10% of the train patients out of training
(hash of the patient id, `pretrain/corpus.py`); this writes exactly those images, so calibration and threshold
choices for `lite` can be fitted on data it was not trained on, never on test.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/cxr_val_csv.py runs/cxr_val.csv
Then:  medvlkit zeroshot --data runs/cxr_val.csv --prompts pneumonia --out runs/cxr-val
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from medvlkit import load_dataset
from medvlkit.tasks.pretrain.corpus import cxr_patient, in_val


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cxr_val.csv")
    root = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data"))
    ds = load_dataset(root / "chest_xray_pneumonia", split="train")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *ds.classnames])
        for item, row in zip(ds.items, ds.labels):
            if in_val(cxr_patient(item)):
                w.writerow([item, *[int(v) for v in row]])
                n += 1
    print(f"wrote {n} validation images to {out}")


if __name__ == "__main__":
    main()
