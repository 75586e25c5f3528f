"""``medvlkit demo``: the embedded model on real images that ship inside registry packages (and yours).

Bundled images: scikit-image's photos (non-medical) and its fundus and histology images, pydicom's CT and MR test
files, and three chest X-rays of Kermany et al.'s test split that ship with medvlkit (CC BY 4.0, see
``demo_images/ATTRIBUTION.md``). Each image goes through the medical-image gate, imaging-modality zero-shot, and, when
the modality is chest X-ray, pneumonia zero-shot (the pneumonia prompt set describes chest X-rays only).
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medvlkit.data import load_dataset
from medvlkit.data.prompts import load_prompt_set
from medvlkit.engine.answer import answer, class_vectors
from medvlkit.engine.results import write_json_atomic, write_result
from medvlkit.models.base import ModelBase
from medvlkit.tasks.gate import run_gate

# scikit-image data name -> (file name, expected modality or None for an ordinary photo)
SKIMAGE_IMAGES = {
    "astronaut": ("photo_astronaut.png", None), "camera": ("photo_cameraman.png", None),
    "chelsea": ("photo_cat.png", None), "coffee": ("photo_coffee.png", None), "rocket": ("photo_rocket.png", None),
    "hubble_deep_field": ("photo_hubble.png", None),
    "retina": ("fundus_retina.png", "fundus photograph"),
    "microaneurysms": ("fundus_microaneurysms.png", "fundus photograph"),
    "immunohistochemistry": ("histology_ihc.png", "histopathology"),
    "cell": ("microscopy_cell.png", "histopathology"),
}
# shipped inside pydicom (no download): a CT and an MR slice, and a power-Doppler ultrasound of a lymph node
PYDICOM_FILES = {"CT_small.dcm": "CT", "MR_small.dcm": "MR", "examples_rgb_color.dcm": "ultrasound"}
DEMO_IMAGES = Path(__file__).parent / "demo_images"  # shipped with medvlkit: Kermany test-split chest films


@dataclass
class DemoRow:
    """What the demo says about one image."""

    file: str
    expected: str            # expected modality, "photo", or "" for the user's images
    p_medical: float
    medical: bool
    modality: str
    p_modality: float
    p_pneumonia: float | None


def write_bundled_images(folder: Path) -> dict[str, str]:
    """Write the bundled demo images into ``folder``. Returns {file name: expected modality or "photo"}."""
    import pydicom
    from skimage import data as skdata

    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (fname, kind) in SKIMAGE_IMAGES.items():
        arr = getattr(skdata, name)()
        Image.fromarray(arr).save(folder / fname)
        expected[fname] = kind or "photo"
    dicom_dir = Path(pydicom.__file__).parent / "data" / "test_files"
    for fname, kind in PYDICOM_FILES.items():
        shutil.copy(dicom_dir / fname, folder / fname)
        expected[fname] = kind
    for path in sorted(DEMO_IMAGES.glob("cxr_*.jpeg")):
        shutil.copy(path, folder / path.name)
        expected[path.name] = "chest x-ray"
    return expected


def run_demo(model: ModelBase, folder: Path, expected: dict[str, str] | None = None, progress: bool = True,
             num_workers: int = 0) -> list[DemoRow]:
    """Gate, modality and (for chest X-rays) pneumonia zero-shot for every image under ``folder``."""
    ds = load_dataset(folder)
    gate = run_gate(model, ds, num_workers=num_workers, on_error="skip", progress=progress)
    emb, p_med, threshold = gate.embeddings, gate.p_medical, gate.threshold
    modality_set = load_prompt_set("modality")
    mod = answer(emb.vectors, class_vectors(model, modality_set), model.logit_scale).probs
    pneu_set = load_prompt_set("pneumonia")
    pneu = answer(emb.vectors, class_vectors(model, pneu_set), model.logit_scale).probs[
        :, pneu_set.classnames.index("pneumonia")]
    rows = []
    for i, item in enumerate(emb.items):
        kind = modality_set.classnames[int(mod[i].argmax())]
        is_med = bool(p_med[i] >= threshold)
        rows.append(DemoRow(item, (expected or {}).get(Path(item).name, ""), float(p_med[i]), is_med,
                            kind if is_med else "-", float(mod[i].max()),
                            float(pneu[i]) if is_med and kind == "chest x-ray" else None))
    return rows


def summarize(rows: list[DemoRow]) -> dict[str, float]:
    """Gate and modality accuracy over the rows with a known expected answer."""
    known = [r for r in rows if r.expected]
    if not known:
        return {}
    gate_ok = [r.medical == (r.expected != "photo") for r in known]
    med = [r for r in known if r.expected != "photo"]
    return {"gate_accuracy": float(np.mean(gate_ok)), "gate_correct": int(np.sum(gate_ok)), "n_known": len(known),
            "modality_accuracy": float(np.mean([r.modality == r.expected for r in med])) if med else float("nan"),
            "modality_correct": int(sum(r.modality == r.expected for r in med)), "n_medical": len(med)}


def save_demo(rows: list[DemoRow], model: ModelBase, out_dir: Path, config: dict) -> dict:
    """Write predictions.csv and result.json. Returns the summary metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "expected", "p_medical", "gate", "modality", "p_modality", "p_pneumonia"])
        for r in rows:
            w.writerow([r.file, r.expected, f"{r.p_medical:.4f}", "medical" if r.medical else "non-medical",
                        r.modality, f"{r.p_modality:.4f}", "" if r.p_pneumonia is None else f"{r.p_pneumonia:.4f}"])
    metrics = summarize(rows)
    write_result(out_dir, dataset=config.get("images") or "bundled (scikit-image, pydicom, Kermany test films)",
                 model=model.name,
                 task="demo", metrics=metrics, config=config,
                 extra={"gate_threshold": model.validated_gate_threshold})
    write_json_atomic(out_dir / "rows.json", {"rows": [r.__dict__ for r in rows]})
    return metrics


def demo_task(model: ModelBase, out_dir: Path, config: dict, images: Path | None = None,
              progress: bool = True) -> tuple[list[DemoRow], dict]:
    """The ``demo`` task: the bundled real images (written into ``out_dir/bundled_images``) and ``images`` (a
    folder of the user's) through the gate, modality and pneumonia prompts; writes predictions.csv and result.json.
    Returns (one row per image, the summary metrics over the bundled images)."""
    expected = write_bundled_images(out_dir / "bundled_images")
    rows = run_demo(model, out_dir / "bundled_images", expected, progress=progress)
    if images is not None:
        rows += run_demo(model, images, None, progress=progress)
    return rows, save_demo(rows, model, out_dir, config)
