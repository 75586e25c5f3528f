"""`medvlkit finetune` and `medvlkit benchmark` in-process, on a tiny CLIP and generated images."""

import json

import numpy as np
import pytest

from helpers import make_split_folders
from medvlkit.apps.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_split_folders(tmp_path_factory.mktemp("cli_ft"), {"train": 6, "val": 6, "test": 6}, seed_step=50)


def _common(tiny_clip_dir, folder):
    return ["--model", f"hf:{tiny_clip_dir}", "--data", str(folder), "--device", "cpu", "--workers", "0",
            "--quiet", "--bootstrap", "20"]


def test_finetune_supervised_then_load(tiny_clip_dir, folder, tmp_path, capsys):
    out = tmp_path / "sup"
    rc = main(["finetune", *_common(tiny_clip_dir, folder), "--mode", "supervised", "--epochs", "2",
               "--batch-size", "4", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "finetune_classification" and result["metrics"]["n"] == 12
    assert (out / "predictions.csv").is_file() and (out / "best" / "trained.safetensors").is_file()
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all("samples_per_s" in h for h in history)
    again = tmp_path / "again"
    assert main(["finetune", *_common(tiny_clip_dir, folder), "--load", str(out / "best"), "--out", str(again)]) == 0
    assert json.loads((again / "result.json").read_text())["metrics"] == result["metrics"]
    assert "ft:" in capsys.readouterr().out


def test_finetune_contrastive_lora_and_use_model_elsewhere(tiny_clip_dir, folder, tmp_path):
    out = tmp_path / "lora"
    assert main(["finetune", *_common(tiny_clip_dir, folder), "--lora", "r=2,alpha=4,targets=q_proj,v_proj",
                 "--freeze", "text", "--grad-cache", "2", "--max-steps", "2", "--batch-size", "4",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "best" / "finetune.json").read_text())
    assert meta["freeze"] == "text" and all("vision_model" in n for n in meta["lora_layers"])
    assert json.loads((out / "result.json").read_text())["task"] == "zeroshot_classification"
    zs = tmp_path / "zs"
    assert main(["zeroshot", "--model", f"ft:{out / 'best'}", "--data", str(folder), "--split", "test",
                 "--prompts", "pneumonia", "--out", str(zs), "--quiet", "--workers", "0", "--bootstrap", "0"]) == 0
    assert json.loads((zs / "result.json").read_text())["model"].startswith("ft:")


@pytest.mark.parametrize("args,message", [
    (["--lora", "rank=4"], "unknown key 'rank'"),
    (["--lora", "targets=nothing_like_this"], "match no Linear/Conv2d"),
    (["--mode", "generative"], "--mode generative"),
    (["--freeze", "both"], "--freeze both"),
    (["--resume"], "no checkpoint.pt"),
    (["--prompts", "pneumonia"], "--prompts goes with --mode prompt_ce"),
    (["--shots", "-1"], "--shots -1"),
    (["--mode", "prompt_ce", "--prompts", "brain_tumor_mri"], "has no prompts for class"),  # not the data's classes
])
def test_finetune_bad_options_are_one_line_errors(tiny_clip_dir, folder, tmp_path, capsys, args, message):
    rc = main(["finetune", *_common(tiny_clip_dir, folder), "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_benchmark_table_and_resume(tiny_clip_dir, folder, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["benchmark", *_common(tiny_clip_dir, folder), "--epochs", "1", "--batch-size", "4", "--out", str(out)]
    assert main(args) == 0
    table = json.loads((out / "table.json").read_text())
    assert list(table["rows"]) == ["zeroshot", "probe_frozen", "lora_contrastive", "probe_lora"]
    assert all(r["auroc"] is not None and r["ci"]["auroc"] for r in table["rows"].values())
    md = (out / "table.md").read_text()
    assert "| probe_lora | 12 |" in md and "AUROC" in md
    stamp = (out / "probe_lora" / "result.json").stat().st_mtime
    capsys.readouterr()
    assert main(args) == 0  # a finished benchmark reruns nothing
    assert (out / "probe_lora" / "result.json").stat().st_mtime == stamp
    assert "| zeroshot | 12 |" in capsys.readouterr().out
    assert main([*args, "--rows", "probe_frozen,supervised_lora"]) == 0  # an extra row on the same folder
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert list(rows) == ["zeroshot", "probe_frozen", "lora_contrastive", "probe_lora", "supervised_lora"]
    assert rows["supervised_lora"]["auroc"] is not None  # table.md keeps every row of the folder
    assert json.loads((out / "supervised_lora" / "result.json").read_text())["task"] == "finetune_classification"
    capsys.readouterr()
    assert main([*args, "--max-steps", "2"]) == 2  # rows computed with other settings are never reused silently
    assert "max_steps=0 then, 2 now" in capsys.readouterr().err


def test_supervised_multilabel_bce_on_a_csv(tiny_clip_dir, tmp_path):
    """Multi-label data (a CheXpert-style CSV with -1 = uncertain) trains a BCE head; metrics are per class."""
    from helpers import make_image

    rng = np.random.default_rng(0)
    lines = ["path,split,Effusion,Edema,Atelectasis"]
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        for i in range(n):
            make_image(tmp_path / "img" / f"{split}{i}.png", seed=i + 100 * len(split))
            labels = rng.choice(["0", "1", "-1"], size=3, p=[0.5, 0.4, 0.1])
            labels[i % 3] = "1"  # every class has positives in every split
            labels[(i + 1) % 3] = "0"  # and negatives
            lines.append(f"img/{split}{i}.png,{split}," + ",".join(labels))
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "bce"
    assert main(["finetune", "--model", f"hf:{tiny_clip_dir}", "--data", str(tmp_path / "labels.csv"),
                 "--mode", "supervised", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0",
                 "--quiet", "--bootstrap", "0", "--uncertain", "ignore", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert {"auroc/Effusion", "auroc/Edema", "auroc/Atelectasis"} <= res["metrics"].keys()
    assert json.loads((out / "best" / "finetune.json").read_text())["multilabel"] is True


def test_lora_adapter_is_readable_by_peft_itself(tiny_clip_dir, tmp_path):
    """The best/ folder also holds peft's adapter_config.json + adapter_model.safetensors: peft's own
    PeftModel.from_pretrained on the base model gives the fine-tuned model's embeddings."""
    import numpy as np
    import torch
    from peft import PeftModel

    from helpers import make_split_folders
    from medvlkit import create_model
    from medvlkit.tasks.finetune.saved import load_finetuned

    data = make_split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    assert main(["finetune", "--model", f"hf:{tiny_clip_dir}", "--data", str(data), "--lora", "r=4,alpha=8",
                 "--max-steps", "3", "--batch-size", "4", "--lr", "0.05", "--device", "cpu", "--workers", "0", "-q",
                 "--test-split", "none", "--out", str(tmp_path / "f")]) == 0
    best = tmp_path / "f" / "best"
    config = json.loads((best / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    ours = load_finetuned(str(best), merge=False).eval()
    base = create_model(f"hf:{tiny_clip_dir}")
    moved = PeftModel.from_pretrained(base, str(best)).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = ours.tokenize(["a chest x-ray", "pneumonia"])
    with torch.no_grad():
        a, b = ours.encode_image(pixels), moved.base_model.model.encode_image(pixels)
        c, d = ours.encode_text(tokens), moved.base_model.model.encode_text(tokens)
        untouched = create_model(f"hf:{tiny_clip_dir}").encode_image(pixels)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    np.testing.assert_allclose(c.numpy(), d.numpy(), atol=1e-6)
    assert (a - untouched).abs().max() > 1e-4  # the adapter did change the model: the comparison means something


def test_prompt_ce_on_k_shots_without_validation(tiny_clip_dir, folder, tmp_path):
    """CLIP-LoRA's loss: K seeded shots per class, no validation (the last epoch is the model), scored zero-shot
    with the prompt set it trained over; an adapter in both towers."""
    out = tmp_path / "pce"
    assert main(["finetune", *_common(tiny_clip_dir, folder), "--mode", "prompt_ce", "--prompts", "pneumonia",
                 "--shots", "3", "--val-split", "none", "--lora", "r=2,alpha=1,targets=q_proj,k_proj,v_proj",
                 "--epochs", "3", "--batch-size", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == 6 and summary["n_val"] == 0 and summary["best"]["epoch"] == 2
    assert len(summary["history"]) == 3 and summary["history"][-1]["train_loss"] is not None
    meta = json.loads((out / "best" / "finetune.json").read_text())
    assert meta["mode"] == "prompt_ce"
    assert any(".text_model." in n for n in meta["lora_layers"]) and any(".vision_model." in n
                                                                        for n in meta["lora_layers"])
    result = json.loads((out / "result.json").read_text())
    assert result["prompt_set"] == "pneumonia" and result["metrics"]["n"] == 12
