"""Image-caption pairs for pretraining ``lite``, built from the real data in ``$MEDVLKIT_DATA``.

Only train splits feed training; a validation part picks the checkpoint. Test splits are never read here.

- chest_xray_pneumonia: train split minus 10% of patients (those 10% are val); many phrasings of normal /
  pneumonia, with bacterial / viral from the file name.
- medpix2: train (val: dev); the real caption plus modality, plane and body-region phrasings.
- retinamnist: train (val: val); fundus photograph and diabetic retinopathy grade.
- pneumoniamnist: train (val: val); 28 px chest X-rays with the chest X-ray phrasings. Without them the gate
  learned that any small upsampled image is a photo (CIFAR is 32 px).
- hymenoptera: train only (its val split is held out for the gate); "a photo of an ant/bee".
- cifar10_test_first846: images 0-499 train, 500-599 val, 600-845 held out; "a photo of a <class>".
- every photo also as a greyscale view (``<item>@@gray``, "a black and white photo of ..."): without it the
  gate learned that greyscale means medical.

- since v2, the train parts of brain_tumor_mri, busi_breast_ultrasound, lung_histopathology_lc25000,
  fundus_eye_diseases and cxr_covid_radiography_adult (val: their val parts), split by the audit's families
  (:mod:`medvlkit.tasks.pretrain.splits`; their test parts are never read here).

BreastMNIST is left out: it is BUSI's images at 28 px, so BUSI's train part is BreastMNIST's images seen, and
figures on BreastMNIST are no longer zero-shot ones for v2.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from medvlkit.data import load_dataset
from medvlkit.data.items import view_item
from medvlkit.errors import MedvlkitError

logger = logging.getLogger(__name__)

CIFAR_TRAIN, CIFAR_VAL = range(0, 500), range(500, 600)  # 600..845 stay held out
VAL_PATIENT_FRACTION = 0.10


@dataclass
class Pair:
    """One training image and the captions it may be paired with.

    ``group`` names its semantic class (e.g. ``cxr/pneumonia``): images of one group are all positives for
    each other's captions, so templated captions shared by many images are not treated as negatives.
    """

    item: str
    captions: list[str]
    group: str
    source: str
    meta: dict = field(default_factory=dict)


CXR_PREFIXES = ["a chest x-ray showing {}.", "chest radiograph with {}.", "frontal chest x-ray: {}.",
                "pediatric chest x-ray, {}.", "an x-ray of the chest with {}.", "{} on chest radiography.",
                "AP chest radiograph demonstrating {}.", "{}"]
CXR_FINDINGS = {
    "normal": ["normal lungs", "no pneumonia", "clear lungs", "no acute cardiopulmonary process",
               "no focal consolidation", "a normal chest", "healthy lungs without infiltrates"],
    "pneumonia": ["pneumonia", "lung consolidation", "airspace opacity from infection", "infiltrates",
                  "patchy opacities consistent with pneumonia", "a lung infection"],
    "bacteria": ["bacterial pneumonia", "lobar consolidation", "focal consolidation from bacterial infection"],
    "virus": ["viral pneumonia", "diffuse interstitial opacities", "bilateral perihilar infiltrates"],
}
RETINA_GRADES = ["no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
                 "severe diabetic retinopathy", "proliferative diabetic retinopathy"]
MODALITY_WORDS = {"CT": ["CT", "computed tomography", "CT scan"], "MR": ["MRI", "magnetic resonance", "MR image"]}


def medical_phrases(modality: str) -> list[str]:
    """Generic captions that tie a modality to the idea of a medical image (what the gate asks about)."""
    return [f"a medical image: {modality}.", f"a {modality}, a medical image.", "a medical image."]


def cxr_patient(path: str) -> str:
    """Patient id from a Kermany file name: ``person123_bacteria_4.jpeg`` -> person123; ``IM-0115-0001`` -> IM-0115."""
    name = Path(path).stem
    return name.split("_")[0] if name.startswith("person") else re.sub(r"-\d+$", "", name)


def in_val(key: str) -> bool:
    """Deterministic 10% of keys (hash-based, independent of file order)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < VAL_PATIENT_FRACTION


def cxr_pairs(root: Path, part: str) -> list[Pair]:
    ds = load_dataset(root / "chest_xray_pneumonia", split="train")
    pairs = []
    for item, label in zip(ds.items, ds.targets()):
        if in_val(cxr_patient(item)) != (part == "val"):
            continue
        cls = ds.classnames[label].lower()
        findings = list(CXR_FINDINGS[cls])
        for sub in ("bacteria", "virus"):
            if cls == "pneumonia" and f"_{sub}" in Path(item).name:
                findings += CXR_FINDINGS[sub]
        caps = [p.format(f) for p in CXR_PREFIXES for f in findings] + medical_phrases("chest x-ray")
        pairs.append(Pair(item, caps, f"cxr/{cls}", "cxr", {"label": cls}))
    return pairs


def medpix_pairs(root: Path, part: str) -> list[Pair]:
    ds = load_dataset(root / "medpix2", split="train" if part == "train" else "dev")
    import json

    rows = [json.loads(line) for line in (root / "medpix2" / f"descriptions_{'train' if part == 'train' else 'dev'}"
                                                                ".jsonl").read_text().splitlines() if line.strip()]
    pairs = []
    if ds.texts is None:
        raise MedvlkitError(f"{root / 'medpix2'}: the MedPix split has no descriptions")
    for item, text, row in zip(ds.items, ds.texts, rows):
        kind, desc = row["Type"], row.get("Description") or {}
        region = (row.get("Location Category") or "").lower()
        plane = (desc.get("Plane") or "").lower()
        words = MODALITY_WORDS.get(kind, [kind])
        caps = [text] if text else []
        caps += [f"{w} of the {region}." for w in words if region]
        caps += [f"{plane} {w} image of the {region}: {text}" for w in words[:1] if plane and region and text]
        caps += [f"a {w} image." for w in words] + medical_phrases(words[0])
        pairs.append(Pair(item, caps, f"medpix/{row['image']}", "medpix", {"type": kind, "region": region}))
    return pairs


def pneumoniamnist_pairs(root: Path, part: str) -> list[Pair]:
    ds = load_dataset(root / "medmnist" / "pneumoniamnist.npz", split=part)
    pairs = []
    for item, label in zip(ds.items, ds.targets()):
        cls = ds.classnames[label]
        caps = [p.format(f) for p in CXR_PREFIXES for f in CXR_FINDINGS[cls]] + medical_phrases("chest x-ray")
        caps += [f"a low resolution chest x-ray with {f}." for f in CXR_FINDINGS[cls]]
        pairs.append(Pair(item, caps, f"cxr/{cls}", "pneumoniamnist", {"label": cls}))
    return pairs


def retina_pairs(root: Path, part: str) -> list[Pair]:
    ds = load_dataset(root / "medmnist" / "retinamnist.npz", split=part)
    pairs = []
    for item, grade in zip(ds.items, ds.targets()):
        g = RETINA_GRADES[grade]
        caps = [f"a retinal fundus photograph with {g}.", f"fundus image of the retina, {g}.",
                "a color fundus photograph of the retina.", f"retina: {g}."] + medical_phrases("fundus photograph")
        pairs.append(Pair(item, caps, f"retina/{grade}", "retina"))
    return pairs


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def natural_pairs(root: Path, part: str) -> list[Pair]:
    pairs = []
    if part == "train":
        ants = load_dataset(root / "natural" / "hymenoptera", split="train")
        for item, c in zip(ants.items, ants.targets()):
            name = ants.classnames[c][:-1]  # ants -> ant
            pairs.append(Pair(item, [f"a photo of {_article(name)} {name}.", f"a close-up photo of {_article(name)} "
                                     f"{name}.", f"{_article(name)} {name} in nature.", "a photo."],
                              f"photo/{name}", "photo"))
    cifar = load_dataset(root / "natural" / "cifar10_test_first846.npz")
    keep = CIFAR_TRAIN if part == "train" else CIFAR_VAL
    for i in keep:
        name = cifar.classnames[cifar.targets()[i]]
        pairs.append(Pair(cifar.items[i], [f"a photo of {_article(name)} {name}.", f"a low resolution photo of "
                                           f"{_article(name)} {name}.", f"a picture of {_article(name)} {name}.",
                                           "a photo."], f"photo/{name}", "photo"))
    return pairs


def gray_views(pairs: list[Pair]) -> list[Pair]:
    """Greyscale copies of photo pairs, captioned as black and white photos."""
    out = []
    for p in pairs:
        caps = [c.replace("a photo", "a black and white photo").replace("a picture", "a grayscale picture")
                for c in p.captions]
        out.append(Pair(view_item(p.item, "gray"), caps, p.group, p.source, dict(p.meta, view="gray")))
    return out


def photo_pairs(root: Path, part: str) -> list[Pair]:
    """Natural photos and their greyscale views."""
    color = natural_pairs(root, part)
    return color + gray_views(color)


# The five sets added in lite v2, split by the audit's families (medvlkit.tasks.pretrain.splits, shipped as
# lite_splits.csv.gz): per set, the caption templates, each label's findings, and the modality the gate hears.
SPLIT_SETS = {
    "brain_tumor_mri": (["a brain MRI showing {}.", "an MR image of the brain with {}.", "brain magnetic resonance "
                         "imaging: {}.", "{} on brain MRI.", "{}"],
                        {"glioma": ["a glioma", "a glial tumor", "an intra-axial brain tumor"],
                         "meningioma": ["a meningioma", "an extra-axial mass", "a dural-based tumor"],
                         "notumor": ["no tumor", "a normal brain", "no brain mass"],
                         "pituitary": ["a pituitary tumor", "a pituitary adenoma", "a sellar tumor"]}, "MRI"),
    "busi_breast_ultrasound": (["a breast ultrasound image showing {}.", "ultrasound of the breast: {}.",
                                "breast sonography with {}.", "{}"],
                               {"benign": ["a benign lesion", "a benign breast mass", "a circumscribed benign mass"],
                                "malignant": ["a malignant tumor", "breast carcinoma", "a suspicious irregular mass"],
                                "normal": ["normal breast tissue", "no lesion", "no breast mass"]}, "ultrasound"),
    "lung_histopathology_lc25000": (["an H&E histopathology image of {}.", "a microscopy slide of {}.",
                                     "lung histology: {}.", "{}"],
                                    {"lung_aca": ["lung adenocarcinoma", "adenocarcinoma", "malignant glands"],
                                     "lung_n": ["benign lung tissue", "normal lung", "benign alveolar tissue"],
                                     "lung_scc": ["lung squamous cell carcinoma", "squamous cell carcinoma",
                                                  "keratinizing carcinoma"]}, "histopathology"),
    "fundus_eye_diseases": (["a retinal fundus photograph with {}.", "fundus image of the eye: {}.",
                             "a color fundus photo showing {}.", "{}"],
                            {"cataract": ["cataract", "a cataract blurring the fundus"],
                             "diabetic_retinopathy": ["diabetic retinopathy", "hemorrhages and exudates"],
                             "glaucoma": ["glaucoma", "optic disc cupping", "a large optic cup"],
                             "normal": ["a normal fundus", "a healthy retina"]}, "fundus photograph"),
    "cxr_covid_radiography_adult": (["an adult chest x-ray showing {}.", "chest radiograph with {}.",
                                     "frontal chest x-ray of an adult: {}.", "{}"],
                                    {"covid": ["COVID-19", "COVID-19 pneumonia", "ground-glass opacities"],
                                     "normal": CXR_FINDINGS["normal"]}, "chest x-ray"),
}


SMALL_VIEWS = ("busi_breast_ultrasound",)
"""Sets also seen as 28 px copies: BreastMNIST is BUSI at 28 px, and without them the gate took BreastMNIST's
images for photos (3.8% accepted by the first v2 candidate)."""


def split_set_pairs(name: str):
    """The builder of set ``name`` of :data:`SPLIT_SETS`."""
    templates, findings, modality = SPLIT_SETS[name]

    from medvlkit.tasks.pretrain.splits import rows_of, shipped_splits

    def build(root: Path, part: str) -> list[Pair]:
        if not (root / name).is_dir():  # a data root without this set (an older one): trained without it, said
            logger.warning("pretrain: %s is not under %s: left out of the corpus", name, root)
            return []
        pairs = []
        for file, label in rows_of(shipped_splits(), name, part):
            caps = [t.format(f) for t in templates for f in findings[label]] + medical_phrases(modality)
            group = f"cxr/{label}" if name.startswith("cxr_") else f"{name}/{label}"
            pairs.append(Pair(str(root / file), caps, group, name, {"label": label}))
            if name in SMALL_VIEWS:  # its 28 px copy too, captioned as such
                small = [f"a low resolution {c[2:]}" if c.startswith("a ") else c for c in caps]
                pairs.append(Pair(view_item(str(root / file), "small28"), small, group, name,
                                  {"label": label, "view": "small28"}))
        return pairs
    return build


BUILDERS = {"cxr": cxr_pairs, "pneumoniamnist": pneumoniamnist_pairs, "medpix": medpix_pairs,
            "retina": retina_pairs, "photo": photo_pairs} | {name: split_set_pairs(name) for name in SPLIT_SETS}


def build_corpus(data_root: Path, part: str, sources: list[str] | None = None) -> list[Pair]:
    """All pairs of one part (``train`` or ``val``) from the chosen sources (default: all)."""
    if part not in ("train", "val"):
        raise MedvlkitError(f"part must be train or val (test data is never used for pretraining), got {part}")
    data_root = Path(data_root)
    if not (data_root / "chest_xray_pneumonia").is_dir():
        raise MedvlkitError(f"--data-root {data_root}: not the medvlkit data folder (no chest_xray_pneumonia/); "
                            "set MEDVLKIT_DATA or pass --data-root")
    unknown = set(sources or []) - set(BUILDERS)
    if unknown:
        raise MedvlkitError(f"unknown pretraining source(s) {sorted(unknown)}; valid: {', '.join(BUILDERS)}")
    pairs = []
    for name in sources or list(BUILDERS):
        pairs += BUILDERS[name](data_root, part)
    return pairs


def sample_epoch(pairs: list[Pair], cap_per_source: int, rng: random.Random) -> list[tuple[int, str]]:
    """One epoch: up to ``cap_per_source`` images of each source (so chest X-rays do not drown the rest), each
    with one random caption. Returns (pair index, caption) in shuffled order."""
    by_source: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_source.setdefault(p.source, []).append(i)
    chosen = []
    for idx in by_source.values():
        chosen += rng.sample(idx, min(cap_per_source, len(idx))) if cap_per_source else idx
    rng.shuffle(chosen)
    return [(i, rng.choice(pairs[i].captions)) for i in chosen]
