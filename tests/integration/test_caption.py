import json

import numpy as np

from helpers import make_image, make_image_folder, save_tiny_blip
from medvlkit import load_dataset
from medvlkit.apps.cli import main
from medvlkit.tasks.caption import class_phrasings, template_captions


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_template_captions_use_prompt_phrasings(tmp_path):
    ds = load_dataset(make_image_folder(tmp_path / "d", {"NORMAL": 2, "PNEUMONIA": 3}))
    ph = class_phrasings(ds.classnames)
    assert any("pneumonia" in p for p in ph["PNEUMONIA"]) and len(ph["NORMAL"]) > 3
    rows = template_captions(ds, per_image=3, seed=1)
    assert len(rows) == 15 and len({r["text"] for r in rows if r["image"] == ds.items[0]}) == 3
    assert rows == template_captions(ds, per_image=3, seed=1)  # seeded
    assert all(r["label"] in ("NORMAL", "PNEUMONIA") for r in rows)
    generic = class_phrasings(["polyp", "ulcer"])
    assert "an image with polyp." in generic["polyp"]


def test_caption_cli_templates_feed_the_captions_adapter(tmp_path):
    make_image_folder(tmp_path / "d", {"NORMAL": 2, "PNEUMONIA": 2})
    out = tmp_path / "pairs.jsonl"
    assert main(["caption", "-d", str(tmp_path / "d"), "--out", str(out), "--per-image", "2"]) == 0
    rows = _rows(out)
    assert len(rows) == 8 and all(r["text"] for r in rows)
    result = json.loads((out.parent / f"{out.name}.result.json").read_text())
    assert result["task"] == "caption" and result["metrics"] == {"n_captions": 8, "n_images": 4}
    pairs = load_dataset(out)
    assert len(pairs) == 8 and pairs.texts == [r["text"] for r in rows]
    for i in range(2):
        make_image(tmp_path / "flat" / f"{i}.png", seed=i)
    assert main(["caption", "-d", str(tmp_path / "flat"), "--out", str(tmp_path / "x.jsonl")]) == 2


def test_caption_cli_with_tiny_blip(tmp_path):
    blip = save_tiny_blip(tmp_path / "blip")
    make_image_folder(tmp_path / "d", {"NORMAL": 1, "PNEUMONIA": 2})
    (tmp_path / "d" / "NORMAL" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "blip.jsonl"
    assert main(["caption", "-d", str(tmp_path / "d"), "--out", str(out), "--captioner", f"hf:{blip}", "-q",
                 "--on-error", "skip"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(r["text"].endswith(", " + r["label"]) for r in rows)
    assert np.all([len(r["text"]) > len(r["label"]) + 2 for r in rows])
    assert main(["caption", "-d", str(tmp_path / "d"), "--out", str(out), "--captioner", f"hf:{tmp_path}/none"]) == 2
