"""``--engine``: a frozen image tower run by ONNX Runtime (:mod:`medvlkit.models.fast_tower`). The graph must give
PyTorch's numbers, be rebuilt when it would not, and step aside whenever PyTorch's tower would compute something
else (gradients, changed weights, LoRA, another size or dtype). Tiny convolutional towers for the logic; the real
``lite`` for the numbers on real films."""

import logging

import pytest
import torch

from medvlkit.errors import MedvlkitError
from medvlkit.models import fast_tower as ft
from medvlkit.models.fast_tower import FastTower, engines_dir, fast_tower, resolve_engine

SIZE, MEAN, STD = 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class Tower(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.proj = torch.nn.Conv2d(8, 4, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.silu(self.bn(self.conv(x))))


def built(tower: Tower, required: bool = True) -> FastTower | None:
    return fast_tower(tower.eval(), tower.features, "tiny", SIZE, MEAN, STD, required=required)


def pixels(n: int = 5, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_graph_gives_pytorchs_features_and_is_built_once(monkeypatch):
    tower = Tower()
    fast = built(tower)
    x = pixels()
    with torch.no_grad():
        want = tower.features(x)
        assert fast.serves(tower, x)
        got = fast(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert fast.max_diff <= ft.TOLERANCE and fast.folder.parent == engines_dir()
    calls = []
    monkeypatch.setattr("medvlkit.models.onnx_graph.export_graph", lambda *a, **k: calls.append(a))
    again = built(tower)  # cached: loaded and verified, not exported again
    assert calls == [] and again.folder == fast.folder


def test_other_weights_get_their_own_graph():
    a, b = built(Tower(0)), built(Tower(1))
    assert a.folder != b.folder


def test_graph_steps_aside_where_pytorch_would_compute_something_else():
    tower = Tower()
    fast = built(tower)
    x = pixels()
    assert not fast.serves(tower, x)  # gradients are on by default: training, gradient heatmaps
    with torch.no_grad():
        assert fast.serves(tower, x)
        assert not fast.serves(tower, pixels(size=SIZE * 2))  # another input size than exported
        assert not fast.serves(tower, x.double())
        tower.train()
        assert not fast.serves(tower, x)  # batch-norm statistics in training mode
        tower.eval()
        assert fast.serves(tower, x)
        tower.conv.weight.mul_(1.0)  # a weight written in place (an optimiser step, load_state_dict)
        assert not fast.serves(tower, x) and not fast.matches(tower)
    tower2 = Tower()
    fast2 = built(tower2)
    tower2.proj = torch.nn.Conv2d(8, 4, 1)  # a module replaced (LoRA wraps layers)
    with torch.no_grad():
        assert not fast2.serves(tower2, x)


def test_damaged_or_wrong_cached_graph_is_rebuilt(caplog):
    tower = Tower()
    fast = built(tower)
    graph = fast.folder / "tower.onnx"
    graph.write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING):
        again = built(tower)
    assert "cannot be loaded" in caplog.text and again.max_diff <= ft.TOLERANCE
    # another tower's graph (same inputs and outputs) behind this tower's key: verification catches it
    other = built(Tower(seed=7))
    graph.write_bytes((other.folder / "tower.onnx").read_bytes())
    for extra in other.folder.glob("tower.onnx.data"):
        (fast.folder / extra.name).write_bytes(extra.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt = built(tower)
    assert "differs from PyTorch" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixels()), tower.features(pixels()), atol=1e-5, rtol=0)


def test_no_graph_is_an_error_under_onnx_and_pytorch_under_auto(monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise MedvlkitError("ONNX export of the tower tower failed (dynamo: unsupported)")

    monkeypatch.setattr("medvlkit.models.onnx_graph.export_graph", fail)
    with pytest.raises(MedvlkitError, match="--engine onnx: ONNX export of the tower"):
        built(Tower(seed=3), required=True)
    with caplog.at_level(logging.WARNING):
        assert built(Tower(seed=3), required=False) is None
    assert "PyTorch is used" in caplog.text


def test_engine_names_and_where_each_applies(monkeypatch):
    assert resolve_engine("auto", "cpu", torch.float32) == "onnx"
    assert resolve_engine("auto", "cpu", torch.bfloat16) == "torch"
    assert resolve_engine("auto", "cuda", torch.float32) == "torch"
    assert resolve_engine("torch", "cpu", torch.float32) == "torch"
    with pytest.raises(MedvlkitError, match="--engine fast: valid options: auto, torch, onnx"):
        resolve_engine("fast", "cpu", torch.float32)
    with pytest.raises(MedvlkitError, match="runs fp32 on the CPU"):
        resolve_engine("onnx", "cuda", torch.float32)
    with pytest.raises(MedvlkitError, match="runs fp32 on the CPU"):
        resolve_engine("onnx", "cpu", torch.float16)
    monkeypatch.setattr(ft, "onnx_runtime_installed", lambda: False)
    assert resolve_engine("auto", "cpu", torch.float32) == "torch"
    with pytest.raises(MedvlkitError, match=r"pip install 'medvlkit\[onnx\]'"):
        resolve_engine("onnx", "cpu", torch.float32)


def test_engine_is_refused_for_models_without_one_and_checked_by_run_options(tiny_clip_dir):
    from medvlkit import create_model
    from medvlkit.engine.options import RunOptions

    with pytest.raises(MedvlkitError, match="runs on PyTorch only"):
        create_model(f"hf:{tiny_clip_dir}", engine="onnx")
    assert create_model(f"hf:{tiny_clip_dir}").engine == "torch"  # auto: PyTorch where no graph is offered
    with pytest.raises(MedvlkitError, match="--engine gpu: valid options"):
        RunOptions(engine="gpu")


@pytest.mark.slow
def test_lite_default_engine_gives_pytorchs_embeddings_on_real_films(lite, tmp_path, data_root):
    """The default engine of ``lite`` on a CPU is ONNX Runtime's graph; its unit embeddings of real chest films
    equal PyTorch's within 1e-4, and an embedding cache never hands one engine's vectors to the other."""
    from medvlkit import create_model, load_dataset
    from medvlkit.engine.features import embed_images
    from medvlkit.engine.identity import model_identity

    ds = load_dataset(data_root / "chest_xray_pneumonia", split="test")
    ds = ds.subset(list(range(0, len(ds), len(ds) // 24))[:24])
    assert lite.engine == "onnx" and model_identity(lite)["engine"] == "onnx"
    slow = create_model("lite", engine="torch")
    assert slow.engine == "torch" and slow.fingerprint() == lite.fingerprint()  # same weights: probes, indexes agree
    fast_v = embed_images(lite, ds, cache=True, cache_dir=str(tmp_path), num_workers=0, progress=False).vectors
    slow_v = embed_images(slow, ds, cache=True, cache_dir=str(tmp_path), num_workers=0, progress=False).vectors
    assert float(abs(fast_v - slow_v).max()) <= 1e-4
    assert (fast_v != slow_v).any()  # computed by each engine, not read from the other's cache entries


@pytest.mark.slow
def test_cli_engine_flag_is_recorded_in_the_result(tmp_path):
    import json

    from helpers import make_image_folder
    from medvlkit.apps.cli import main

    data = make_image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    for engine, want in (("torch", "torch"), ("auto", "onnx")):
        out = tmp_path / f"emb-{engine}"
        assert main(["embed", "--data", str(data), "--engine", engine, "--out", str(out), "--quiet",
                     "--workers", "0"]) == 0
        result = json.loads((out / "result.json").read_text())
        assert result["identity"]["model"]["engine"] == want
    assert main(["embed", "--data", str(data), "--engine", "onnx", "--precision", "bf16", "--out",
                 str(tmp_path / "x"), "--quiet"]) != 0


def test_a_new_graph_that_differs_is_never_kept(monkeypatch, tmp_path):
    """The build's own check on eight real images: a graph of other weights is refused and leaves no folder."""
    from medvlkit.models import onnx_graph

    real = onnx_graph.export_graph

    def wrong(module, *args, **kwargs):  # exports another tower's function in place of this one's
        other = Tower(seed=11).eval()
        return real(ft._Forward(other, other.features).eval(), *args, **kwargs)

    monkeypatch.setattr(onnx_graph, "export_graph", wrong)
    tower = Tower(seed=12)
    with pytest.raises(MedvlkitError, match="new ONNX Runtime graph differs from PyTorch .* on 8 check images"):
        built(tower, required=True)
    key_folder = engines_dir() / f"tiny-{ft.weights_key(tower.eval(), SIZE)[:20]}"
    assert not key_folder.exists() and not list(engines_dir().glob(".tiny-*"))  # neither kept nor half-written
