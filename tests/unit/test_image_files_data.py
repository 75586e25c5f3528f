"""One image is data (issue 29): ``--data`` takes one image file, a comma-separated list of them or a quoted glob
pattern wherever a folder is taken, as an unlabelled dataset; faults in a list are named; zero-shot on unlabelled
data shows each image's top classes (the numbers of its predictions.csv) and how many more there are."""

import csv

import numpy as np
import pytest
from PIL import Image

from medvlkit.data import load_dataset
from medvlkit.errors import MedvlkitError, NoSplitsError


def pictures(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"film_{i}.png")
        paths.append(folder / f"film_{i}.png")
    return paths


def test_one_file_a_list_and_a_pattern(tmp_path):
    paths = pictures(tmp_path / "x")
    (tmp_path / "x" / "notes.txt").write_text("not an image")
    one = load_dataset(str(paths[0]))
    assert one.items == [str(paths[0].resolve())] and not one.has_labels and one.name == "film_0"
    listed = load_dataset(f"{paths[2]},{paths[0]}")
    assert listed.items == [str(paths[2].resolve()), str(paths[0].resolve())]  # the order given
    assert len(load_dataset(str(tmp_path / "x" / "film_*.png")).items) == 3
    for spec, needle in ((f"{paths[0]},{tmp_path / 'missing.png'}", "no such file"),
                         (f"{paths[0]},{tmp_path / 'x' / 'notes.txt'}", "not image files"),
                         (str(tmp_path / "x" / "*.jpg"), "matches no file"),
                         (str(tmp_path / "nothing.png"), "no such file or folder")):
        with pytest.raises(MedvlkitError, match=needle):
            load_dataset(spec)
    with pytest.raises(NoSplitsError, match="no splits"):
        load_dataset(str(paths[0]), split="test")


def test_zeroshot_on_files_shows_the_answers(tmp_path, tiny_clip_dir, capsys):
    from medvlkit.apps.cli import main

    pictures(tmp_path / "x", n=12)
    out = tmp_path / "z"
    assert main(["zeroshot", "--model", f"hf:{tiny_clip_dir}", "--data", str(tmp_path / "x" / "film_*.png"),
                 "--classes", "effusion,normal,nodule", "-q", "--workers", "0", "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and "... and 2 more" in shown
    for row in rows[:10]:  # each shown image with its most probable class and that probability, as in the file
        best = max(("effusion", "normal", "nodule"), key=lambda c: float(row[f"prob_{c}"]))
        line = next(ln for ln in shown.splitlines() if row["file"].rsplit("/", 1)[-1] in ln)
        assert f"{best} {float(row[f'prob_{best}']):.3f}" in line
