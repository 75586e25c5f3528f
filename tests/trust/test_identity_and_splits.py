"""Issue 25, items 2 (results identified by what they consumed), 6 (never scored on the data that trained or tuned
it), 14 (a validation score that cannot be computed) and ``--shots 0`` of 20. Each test failed on the main of
2026-12-06."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import make_image, make_split_folders, save_tiny_clip
from medvlkit import MedvlkitError
from medvlkit.apps.cli import main

QUIET = ["--quiet", "--workers", "0", "--no-cache", "--bootstrap", "0"]


def _cells(out: Path) -> list[dict]:
    return json.loads((out / "sweep.json").read_text())["cells"]


def _accuracy(cell: dict) -> float:
    return json.loads((Path(cell["out"]) / "result.json").read_text())["metrics"]["accuracy"]


def test_item02_skip_existing_compares_what_a_result_consumed(tmp_path, monkeypatch):
    """A kept result after the prompt file, the labels, the weights or medvlkit's version changed was a number
    computed from other inputs."""
    import medvlkit._version

    model = save_tiny_clip(tmp_path / "model", seed=0)
    for i in range(8):
        make_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    csv_path = tmp_path / "labels.csv"
    labels = ["normal" if i % 2 else "pneumonia" for i in range(8)]
    csv_path.write_text("path,labels,split\n" + "".join(f"imgs/{i}.png,{lab},test\n" for i, lab in enumerate(labels)))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"name": "mine", "classes": {"normal": ["clear lungs"],
                                                               "pneumonia": ["consolidation"]}}))
    out = tmp_path / "sweep"
    argv = ["eval", "-m", f"hf:{model}", "-d", str(csv_path), "--task", "zeroshot", "--prompts", str(prompts),
            "--skip-existing", "--out", str(out), *QUIET]
    assert main(argv) == 0 and [c["status"] for c in _cells(out)] == ["done"]
    first = _accuracy(_cells(out)[0])
    assert main(argv) == 0 and [c["status"] for c in _cells(out)] == ["skipped"]  # nothing changed: kept

    prompts.write_text(json.dumps({"name": "mine", "classes": {"normal": ["consolidation"],
                                                               "pneumonia": ["clear lungs"]}}))  # swapped
    assert main(argv) == 0 and [c["status"] for c in _cells(out)] == ["done"]
    assert _accuracy(_cells(out)[0]) == pytest.approx(1 - first)

    flipped = ["pneumonia" if lab == "normal" else "normal" for lab in labels]  # same images, other labels
    csv_path.write_text("path,labels,split\n" + "".join(f"imgs/{i}.png,{lab},test\n" for i, lab in enumerate(flipped)))
    assert main(argv) == 0 and [c["status"] for c in _cells(out)] == ["done"]
    assert _accuracy(_cells(out)[0]) == pytest.approx(first)

    shutil.rmtree(model)
    save_tiny_clip(model, seed=1)  # re-trained weights behind the same spec
    assert main(argv) == 0 and [c["status"] for c in _cells(out)] == ["done"]
    assert main(argv) == 0 and [c["status"] for c in _cells(out)] == ["skipped"]
    monkeypatch.setattr(medvlkit._version, "__version__", "99.0")  # the version every result records
    assert main(argv) == 0 and [c["status"] for c in _cells(out)] == ["done"]
    identity = json.loads((Path(_cells(out)[0]["out"]) / "result.json").read_text())["identity"]
    assert identity["medvlkit"] == "99.0" and identity["model"]["weights"].count("sha256") >= 1


def test_item02_tokenizer_is_part_of_the_model_fingerprint(tmp_path):
    """Text vectors were cached under a fingerprint that ignored --tokenizer: another tokenizer for the same weights
    was served the first one's prompt vectors."""
    from medvlkit.models.base import tokenizer_files

    model_dir = save_tiny_clip(tmp_path / "m")
    from medvlkit import create_model

    m = create_model(f"hf:{model_dir}")
    before = m.fingerprint()
    assert tokenizer_files(m.tokenizer)
    vocab = Path(tokenizer_files(m.tokenizer)[0])
    vocab.write_text(vocab.read_text() + " ")  # an edited tokenizer file
    assert create_model(f"hf:{model_dir}").fingerprint() != before


@pytest.fixture(scope="module")
def three_splits(tmp_path_factory):
    return make_split_folders(tmp_path_factory.mktemp("splits"), {"train": 6, "val": 4, "test": 4})


@pytest.mark.parametrize("split", ["val", "train"])
def test_item06_eval_never_scores_the_probe_where_it_was_fitted(split, tiny_clip_dir, three_splits, tmp_path):
    """eval --split val scored the probe on the split that chose C (AUROC 0.967), --split train on its own
    training data (0.9999), against 0.941 on test."""
    out = tmp_path / "sweep"
    assert main(["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(three_splits), "--task", "probe", "--split", split,
                 "--out", str(out), *QUIET]) == 2
    cell = _cells(out)[0]
    assert cell["status"] == "failed" and "memory, not skill" in cell["error"]
    assert not (Path(cell["out"]) / "result.json").exists()


def test_item06_probe_and_finetune_refuse_their_own_training_data(tiny_clip_dir, three_splits, tmp_path, capsys):
    base = ["--model", f"hf:{tiny_clip_dir}", "--data", str(three_splits), *QUIET]
    assert main(["probe", *base, "--test-split", "train", "--out", str(tmp_path / "p1")]) == 2
    assert main(["probe", *base, "--test-split", "val", "--out", str(tmp_path / "p2")]) == 2
    assert main(["probe", *base, "--val-split", "holdout", "--test-split", "train", "--out", str(tmp_path / "p3")]) == 2
    assert "memory, not skill" in capsys.readouterr().err
    assert main(["probe", *base, "--out", str(tmp_path / "ok")]) == 0  # test: apart from both
    ft = ["finetune", "--model", f"hf:{tiny_clip_dir}", "--data", str(three_splits), "--quiet", "--workers", "0",
          "--bootstrap", "0", "--max-steps", "1", "--batch-size", "4", "--device", "cpu"]
    assert main([*ft, "--test-split", "val", "--out", str(tmp_path / "f1")]) == 2
    assert "chose its best epoch" in capsys.readouterr().err
    assert not (tmp_path / "f1" / "checkpoint.pt").exists()  # refused before any training


def test_item14_one_class_validation_is_refused_at_start(tiny_clip_dir, tmp_path, capsys):
    """A one-class validation split under supervised AUROC scored NaN: best/ was never saved, the summary named it
    anyway and the test step failed to load it."""
    root = make_split_folders(tmp_path / "data", {"train": 4, "test": 2})
    make_image_folder_one_class(root / "val")
    assert main(["finetune", "--model", f"hf:{tiny_clip_dir}", "--data", str(root), "--mode", "supervised",
                 "--quiet", "--workers", "0", "--bootstrap", "0", "--epochs", "1", "--batch-size", "4",
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    assert "no class has both positive and negative" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def make_image_folder_one_class(folder: Path) -> None:
    for i in range(3):
        make_image(folder / "NORMAL" / f"v{i}.png", seed=900 + i)
    (folder / "PNEUMONIA").mkdir(parents=True)  # an empty class folder: every validation image is NORMAL


def test_item14_a_nan_validation_score_is_an_error_not_a_best_model(tmp_path):
    from medvlkit.engine.training import Job, LoopOptions, fit

    class NanJob(Job):
        def __init__(self):
            import torch

            self.world = __import__("medvlkit.engine.distributed", fromlist=["World"]).World()
            self.device = torch.device("cpu")
            self.param = torch.nn.Parameter(torch.zeros(1))
            self.optimizer = torch.optim.SGD([self.param], lr=0.1)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)
            self.scaler, self.saved = None, []

        def epoch_batches(self, epoch):
            return [[0]]

        def load_batches(self, plan, epoch):
            return [None for _ in plan]

        def train_mode(self):
            pass

        def train_step(self, planned, batch, epoch):
            loss = (self.param - 1).pow(2).sum()
            loss.backward()
            return float(loss.detach())

        def reduce_gradients(self):
            pass

        def validate(self, epoch):
            return {"score": float("nan")}

        def save_best(self, record):
            self.saved.append(record)

        def state_dict(self):
            return {"param": self.param.detach()}

        def load_state_dict(self, state):
            pass

    job = NanJob()
    with pytest.raises(MedvlkitError, match="no best model was saved"):
        fit(job, LoopOptions(epochs=2, patience=5, total_steps=2, desc="nan"), tmp_path, {}, None, False)
    assert job.saved == []


def test_item20_shots_zero_is_not_all_data(tiny_clip_dir, three_splits, tmp_path, capsys):
    assert main(["probe", "--model", f"hf:{tiny_clip_dir}", "--data", str(three_splits), "--shots", "0",
                 "--out", str(tmp_path / "p"), *QUIET]) == 2
    assert "--shots 0" in capsys.readouterr().err
    from medvlkit.data.splits import few_shot_indices

    with pytest.raises(MedvlkitError):
        few_shot_indices(np.eye(2), 0)
