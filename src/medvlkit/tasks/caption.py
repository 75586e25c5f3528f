"""Captions for images that have none: the image-caption JSONL that contrastive fine-tuning reads.

- templates (default): captions written from labels, several phrasings per class, sampled with a seed; the
  phrasings come from a shipped prompt set when one covers the dataset's classes, else from the class names;
- a transformers BLIP captioner (``--captioner hf:DIR``), with the class appended as CLIP_COVID did.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.prompts import list_prompt_sets, load_prompt_set
from medvlkit.errors import ImageReadError, MedvlkitError

GENERIC_TEMPLATES = ["a medical image showing {}.", "an image with {}.", "{}.", "findings: {}."]


def class_phrasings(classnames: list[str]) -> dict[str, list[str]]:
    """Caption phrasings per class: from the shipped prompt set that covers every class with the most phrasings,
    else generic templates around the class names."""
    best: dict[str, list[str]] = {}
    for name in list_prompt_sets():
        try:
            chosen = load_prompt_set(name).select(classnames)
        except MedvlkitError:
            continue
        found = {c.name: chosen.texts(c.positive) for c in chosen.classes}
        if sum(map(len, found.values())) > sum(map(len, best.values())):
            best = found
    return best or {c: [t.format(c.replace("_", " ").lower()) for t in GENERIC_TEMPLATES] for c in classnames}


def findings_caption(present: list[str]) -> str:
    """The one caption format of multi-label data: ``findings: a, b.`` or ``no findings.`` (fine-tuning trains on
    it, its validation prompts and ``medvlkit caption`` write it)."""
    return "findings: " + ", ".join(present) + "." if present else "no findings."


def label_caption_pools(dataset: ImageDataset) -> tuple[list[list[str]], list[list[str]]]:
    """Per item, the captions its label(s) may be written as (single-label: the class's phrasings; multi-label:
    :func:`findings_caption`) and the classes present."""
    phrasings = class_phrasings(dataset.classnames)
    pools, present_all = [], []
    for row in dataset.label_matrix:
        present = [c for c, v in zip(dataset.classnames, row) if v == 1]
        pools.append([findings_caption(present)] if dataset.multilabel else phrasings[present[0]])
        present_all.append(present)
    return pools, present_all


def template_captions(dataset: ImageDataset, per_image: int = 1, seed: int = 0) -> list[dict]:
    """Rows ``{"image", "text", "label"}``: ``per_image`` distinct phrasings of each image's label(s)."""
    if not dataset.has_labels:
        raise MedvlkitError(f"dataset '{dataset.name}' has no labels to write captions from; give a captioner "
                            "(--captioner hf:DIR with BLIP weights)")
    rng = random.Random(seed)
    rows = []
    for item, pool, present in zip(dataset.items, *label_caption_pools(dataset)):
        for text in rng.sample(pool, min(per_image, len(pool))):
            rows.append({"image": item, "text": text, "label": "|".join(present)})
    return rows


class BlipCaptioner:
    """A transformers BLIP captioning model and processor loaded from a local folder."""

    def __init__(self, folder: str, device: str = "cpu", max_new_tokens: int = 30) -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        path = Path(folder.removeprefix("hf:")).expanduser()
        if not path.is_dir():
            raise MedvlkitError(f"--captioner {folder}: no such folder (a BLIP model saved with save_pretrained)")
        try:
            self.processor = BlipProcessor.from_pretrained(path, local_files_only=True)
            blip: Any = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True)
            self.model = blip.to(device).eval()
        except (OSError, ValueError) as err:
            raise MedvlkitError(f"--captioner {folder}: cannot load a BLIP captioner there ({err})") from None
        self.device, self.max_new_tokens = device, max_new_tokens

    @torch.inference_mode()
    def __call__(self, images: list) -> list[str]:
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, min_new_tokens=1)
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]


def model_captions(dataset: ImageDataset, captioner: BlipCaptioner, batch_size: int = 16, on_error: str = "fail",
                   progress: bool = True) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows from a captioner, with the class appended (``"<caption>, <class>"``) when the data has labels."""
    rows, skipped = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="caption", disable=not progress):
        idx, images = [], []
        for i in range(start, min(start + batch_size, len(dataset))):
            try:
                images.append(dataset.load_image(i).convert("RGB"))
                idx.append(i)
            except ImageReadError as err:
                if on_error == "fail":
                    raise
                skipped.append((dataset.items[i], err.reason))
        for i, text in zip(idx, captioner(images) if images else []):
            label = ""
            if dataset.has_labels:
                label = "|".join(c for c, v in zip(dataset.classnames, dataset.label_matrix[i]) if v == 1)
                text = f"{text}, {label.replace('|', ', ')}" if label else text
            rows.append({"image": dataset.items[i], "text": text, "label": label})
    return rows, skipped


def write_jsonl(rows: list[dict], path: Path) -> None:
    """Write rows as JSON lines through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


__all__ = ["BlipCaptioner", "class_phrasings", "model_captions", "template_captions", "write_jsonl"]


def caption_task(dataset: ImageDataset, out: Path, config: dict, captioner: str | None = None, per_image: int = 1,
                 seed: int = 0, device: str = "auto", batch_size: int = 16, on_error: str = "fail",
                 progress: bool = True) -> tuple[list[dict], list]:
    """The ``caption`` task: captions for ``dataset`` (a BLIP ``captioner`` spec, else templates from the labels)
    written to the JSONL file ``out`` with ``<out>.result.json`` beside it. Returns (rows, skipped files)."""
    from medvlkit.engine.results import write_result
    from medvlkit.models.registry import resolve_device

    if per_image < 1:
        raise MedvlkitError(f"--per-image {per_image}: must be at least 1")
    skipped: list = []
    if captioner:
        rows, skipped = model_captions(dataset, BlipCaptioner(captioner, resolve_device(device)), batch_size,
                                       on_error, progress=progress)
    else:
        rows = template_captions(dataset, per_image, seed)
    write_jsonl(rows, out)
    write_result(out.parent, dataset=dataset.full_name,
                 model=captioner or "templates", task="caption", config=config, seed=seed, n_skipped=len(skipped),
                 metrics={"n_captions": len(rows), "n_images": len(dataset) - len(skipped)},
                 extra={"captions": str(out), "skipped": [list(s) for s in skipped]},
                 file_name=f"{out.name}.result.json")
    return rows, skipped
