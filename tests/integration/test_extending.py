"""The site's "Extending medvlkit" page (docs/extending.md): its plugin file, copied verbatim from the page, adds a
backbone, a dataset format and a task that the CLI then uses like built-ins (zero-shot, LoRA fine-tuning, reloading
the fine-tuned model, the new verb, and the report over its result)."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import make_image
from medvlkit.apps.cli import main

PAGE = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def _plugin_source() -> str:
    return re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)


@pytest.fixture
def registries():
    """Whatever a plugin registers is gone after the test."""
    from medvlkit.apps.cli import app
    from medvlkit.data import dataset
    from medvlkit.models import registry

    sources, adapters, verbs = dict(registry._SOURCES), dict(dataset._ADAPTERS), list(app.registered_commands)
    yield
    registry._SOURCES.clear()
    registry._SOURCES.update(sources)
    dataset._ADAPTERS.clear()
    dataset._ADAPTERS.update(adapters)
    app.registered_commands[:] = verbs


def test_readme_plugin_adds_a_backbone_and_a_format(tmp_path, monkeypatch, registries):
    plugin = tmp_path / "my_extension.py"
    plugin.write_text(_plugin_source())
    monkeypatch.setenv("MEDVLKIT_PLUGINS", str(plugin))
    torch.manual_seed(0)
    save_file({"image_proj.weight": torch.randn(16, 192) * 0.1, "image_proj.bias": torch.zeros(16),
               "text_proj.weight": torch.randn(16, 256) * 0.1, "text_proj.bias": torch.zeros(16),
               "log_logit_scale": torch.tensor(2.3)}, str(tmp_path / "toy.safetensors"))
    lines = []
    for split in ("train", "val", "test"):
        for i in range(6):
            label = "PNEUMONIA" if i % 2 else "NORMAL"
            make_image(tmp_path / "img" / f"{split}{i}.png", seed=i + 10 * len(split))
            lines.append(f"img/{split}{i}.png\t{label}")
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines[-6:]) + "\n")
    spec = f"toy:{tmp_path / 'toy.safetensors'}"
    base = ["--model", spec, "-q", "--workers", "0", "--bootstrap", "0"]
    assert main(["zeroshot", *base, "--data", str(tmp_path / "test.tsv"), "--prompts", "pneumonia", "--out",
                 str(tmp_path / "z")]) == 0
    res = json.loads((tmp_path / "z" / "result.json").read_text())
    assert res["model"] == spec and res["metrics"]["n"] == 6 and res["classnames"] == ["NORMAL", "PNEUMONIA"]
    assert main(["datasets", "--data", str(tmp_path / "test.tsv")]) == 0
    assert main(["finetune", *base, "--data", str(tmp_path / "train.tsv"), "--lora", "default", "--max-steps", "2",
                 "--batch-size", "4", "--device", "cpu", "--test-split", "none", "--out", str(tmp_path / "f")]) == 0
    meta = json.loads((tmp_path / "f" / "best" / "finetune.json").read_text())
    assert meta["base"] == spec and sorted(meta["lora_layers"]) == ["image_proj", "text_proj"]
    assert main(["zeroshot", *base[:1], f"ft:{tmp_path / 'f' / 'best'}", *base[2:], "--data",
                 str(tmp_path / "test.tsv"), "--prompts", "pneumonia", "--out", str(tmp_path / "z2")]) == 0
    # the plugin's task: a verb with the shared flags, a result.json whose headline the report shows
    assert main(["text-similarity", *base[:-2], "--data", str(tmp_path / "test.tsv"), "--text", "pneumonia",
                 "--batch-size", "2", "--out", str(tmp_path / "sim")]) == 0
    sim = json.loads((tmp_path / "sim" / "result.json").read_text())
    assert sim["task"] == "text_similarity" and sim["headline"] == ["mean_similarity"] and sim["metrics"]["n"] == 6
    assert -1 <= sim["metrics"]["mean_similarity"] <= 1
    assert main(["report", str(tmp_path / "sim"), str(tmp_path / "z"), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "report.md").read_text()
    assert "text_similarity" in table and f"{sim['metrics']['mean_similarity']:.4f}"[:5] in table


def test_a_broken_plugin_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.setenv("MEDVLKIT_PLUGINS", str(tmp_path / "bad.py"))
    assert main(["models"]) == 2
    assert "plugin" in capsys.readouterr().err
    monkeypatch.setenv("MEDVLKIT_PLUGINS", str(tmp_path / "missing.py"))
    assert main(["models"]) == 2
    assert "no such file" in capsys.readouterr().err
