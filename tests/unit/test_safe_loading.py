"""Loading a file never runs its code: OpenAI TorchScript archives, planted pickles, training checkpoints."""

import json

import pytest
import torch

from helpers import (
    PlantedPayload,
    make_split_folders,
    save_torchscript_state_dict,
    tiny_clip_config,
    write_clip_tokenizer,
    write_planted_torchscript,
)
from medvlkit import MedvlkitError, create_model
from medvlkit.engine.checkpoint import load_checkpoint, save_checkpoint
from medvlkit.models.openai_ckpt import hf_to_openai_state_dict
from medvlkit.models.torchscript import read_torchscript_tensors


def _no_jit(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("torch.jit.load executes the archive and must never be called")

    monkeypatch.setattr(torch.jit, "load", refuse)


def test_torchscript_clip_archive_loads_without_executing_it(tmp_path, monkeypatch):
    from transformers import CLIPModel

    torch.manual_seed(0)
    hf = CLIPModel(tiny_clip_config()).eval()
    sd = hf_to_openai_state_dict(hf)
    sd["input_resolution"] = torch.tensor(32)  # OpenAI's archives carry these three as tensors too
    sd["context_length"], sd["vocab_size"] = torch.tensor(32), torch.tensor(514)
    save_torchscript_state_dict(sd, tmp_path / "clip.pt")
    reference = torch.jit.load(str(tmp_path / "clip.pt")).state_dict()
    _no_jit(monkeypatch)
    got = read_torchscript_tensors(tmp_path / "clip.pt")
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) and got[k].dtype == reference[k].dtype for k in got)
    write_clip_tokenizer(tmp_path)
    m = create_model(f"openai-ckpt:{tmp_path / 'clip.pt'}")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=pixels)
        got_img = m.encode_image(pixels, normalize=False)
    torch.testing.assert_close(got_img, getattr(want, "pooler_output", want), atol=1e-5, rtol=1e-5)


def test_planted_torchscript_archive_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    _no_jit(monkeypatch)
    marker = tmp_path / "pwned"
    write_planted_torchscript(tmp_path / "evil.pt", marker)
    write_clip_tokenizer(tmp_path)
    with pytest.raises(MedvlkitError, match="refused: its data.pkl asks for"):
        create_model(f"openai-ckpt:{tmp_path / 'evil.pt'}")
    assert not marker.exists()


def test_planted_plain_pickle_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"visual.proj": PlantedPayload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(MedvlkitError, match="could run code"):
        create_model(f"openai-ckpt:{tmp_path / 'evil.pth'}")
    assert not marker.exists()


def test_ft_folder_naming_a_planted_base_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    write_planted_torchscript(tmp_path / "evil.pt", marker)
    write_clip_tokenizer(tmp_path)
    best = tmp_path / "run" / "best"
    best.mkdir(parents=True)
    (best / "finetune.json").write_text(json.dumps({"base": f"openai-ckpt:{tmp_path / 'evil.pt'}", "lora": None,
                                                    "lora_layers": [], "mode": "contrastive", "trained": []}))
    with pytest.raises(MedvlkitError, match="refused"):
        create_model(f"ft:{best}")
    assert not marker.exists()


def test_checkpoint_round_trip_and_planted_checkpoint(tmp_path):
    import numpy as np

    state = {"w": torch.ones(2), "step": 3, "history": [{"score": np.float64(0.5), "n": np.int64(2)}],
             "rng": (3, tuple(range(5)), None)}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["history"] == [{"score": 0.5, "n": 2}] and back["rng"] == (3, (0, 1, 2, 3, 4), None)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "x": PlantedPayload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(MedvlkitError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_split_folders(tmp_path_factory.mktemp("safedata"), {"train": 4, "val": 4, "test": 4})


def test_finetune_resume_refuses_a_planted_checkpoint(tiny_clip_dir, folder, tmp_path):
    from medvlkit.tasks.finetune import FinetuneConfig, finetune

    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    torch.save({"step": 1, "x": PlantedPayload(marker)}, out / "checkpoint.pt")
    cfg = FinetuneConfig(model=f"hf:{tiny_clip_dir}", data=str(folder), out_dir=str(out), lora="r=2", epochs=1,
                         batch_size=4, device="cpu", workers=0)
    with pytest.raises(MedvlkitError, match="refused"):
        finetune(cfg, resume=True, progress=False)
    assert not marker.exists()


def test_benchmark_refuses_a_planted_checkpoint(tiny_clip_dir, folder, tmp_path):
    from medvlkit.tasks.benchmark import BenchmarkConfig, run_benchmark

    out, marker = tmp_path / "bench", tmp_path / "pwned"
    row = out / "lora_contrastive"
    row.mkdir(parents=True)
    torch.save({"step": 1, "x": PlantedPayload(marker)}, row / "checkpoint.pt")
    cfg = BenchmarkConfig(model=f"hf:{tiny_clip_dir}", data=str(folder), out_dir=str(out),
                          rows=("lora_contrastive",), epochs=1, batch_size=4, device="cpu", workers=0)
    with pytest.raises(MedvlkitError, match="refused"):
        run_benchmark(cfg, progress=False)
    assert not marker.exists()


def test_pretrain_resume_refuses_a_planted_checkpoint(tmp_path, monkeypatch):
    from medvlkit.tasks.pretrain.train import PretrainConfig, pretrain

    out, marker = tmp_path / "pre", tmp_path / "pwned"
    out.mkdir()
    torch.save({"heads": PlantedPayload(marker)}, out / "checkpoint.pt")
    import medvlkit.tasks.pretrain.train as train

    # the features are not needed to reach the checkpoint: stop before any extraction work
    monkeypatch.setattr(train, "extract", lambda *a, **k: (_ for _ in ()).throw(AssertionError("not reached")))
    with pytest.raises((MedvlkitError, AssertionError)) as info:
        pretrain(PretrainConfig(data_root=str(tmp_path), out_dir=str(out)), resume=True, progress=False)
    assert not marker.exists()
    assert info.type is MedvlkitError, "the checkpoint must be checked before any work"


def test_planted_probe_file_is_refused(tmp_path):
    """A probe.npz whose arrays hide a pickle: numpy is never allowed to unpickle it."""
    import io
    import zipfile

    import numpy as np

    from medvlkit.tasks.probe import LinearProbe

    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "probe.npz", "w") as z:
        for name, arr in (("header", np.array('{"C": 1, "classnames": ["a", "b"], "multilabel": false}')),
                          ("coef", np.array([PlantedPayload(marker)], dtype=object)), ("intercept", np.zeros(2))):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=True)
            z.writestr(f"{name}.npy", buf.getvalue())
    with pytest.raises(MedvlkitError, match="not a valid probe"):
        LinearProbe.load(tmp_path / "probe.npz")
    assert not marker.exists()
