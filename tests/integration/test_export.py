"""`medvlkit export` to ONNX and `--model onnx:DIR`: every family verified against PyTorch, the onnx: model used by
the inference tasks, int8 quantisation, and one-line errors for folders that are not exports."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_image_folder, make_split_folders, write_clip_tokenizer
from medvlkit import create_model
from medvlkit.apps.cli import main
from medvlkit.tasks.export import TOLERANCE, export_onnx

pytest.importorskip("onnxruntime")


def _export(spec: str, out, *extra: str) -> dict:
    assert main(["export", "--model", spec, "--out", str(out), *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny_onnx(tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny-clip"
    return _export(f"hf:{tiny_clip_dir}", out), out


def test_clip_and_siglip_exports_match_pytorch(tiny_onnx, tiny_clip_dir, tiny_siglip_dir, tmp_path):
    manifest, out = tiny_onnx
    siglip = _export(f"hf:{tiny_siglip_dir}", tmp_path / "siglip")
    for m in (manifest, siglip):
        v = m["verification"]
        assert v["image_max_abs_diff"] <= TOLERANCE and v["text_max_abs_diff"] <= TOLERANCE and v["tolerance"] == 1e-4
        assert v["n_images"] == 16 and m["format"] == "medvlkit-onnx" and m["quantize"] is None  # the demo's images
    assert siglip["tokenizer"]["padding"] == "max_length" and siglip["tokenizer"]["keys"] == ["input_ids"]
    assert manifest["tokenizer"]["keys"] == ["input_ids", "attention_mask"]
    # the onnx: model on other images (generated, odd sizes) and texts, batch sizes the graphs were not traced with
    ref, onnx = create_model(f"hf:{tiny_clip_dir}"), create_model(f"onnx:{out}")
    folder = make_image_folder(tmp_path / "imgs", {"a": 3, "b": 2})
    pixels = ref.preprocess([Image.open(p) for p in sorted(folder.rglob("*.png"))])
    with torch.no_grad():
        np.testing.assert_allclose(onnx.encode_image(pixels).numpy(), ref.encode_image(pixels).numpy(), atol=1e-4)
        texts = ["pleural effusion", "a chest x-ray with a large left-sided pneumothorax and rib fractures", "x"]
        np.testing.assert_allclose(onnx.encode_text(onnx.tokenize(texts)).numpy(),
                                   ref.encode_text(ref.tokenize(texts)).numpy(), atol=1e-4)
    assert onnx.logit_scale == pytest.approx(ref.logit_scale) and onnx.embed_dim == 32


def test_onnx_model_runs_the_inference_tasks(tiny_onnx, tiny_clip_dir, tmp_path, capsys):
    _, out = tiny_onnx
    folder = make_split_folders(tmp_path / "data", {"test": 4})
    common = ["--data", str(folder), "--split", "test", "--quiet", "--workers", "0"]
    for spec, name in ((f"onnx:{out}", "onnx"), (f"hf:{tiny_clip_dir}", "torch")):
        assert main(["zeroshot", "--model", spec, *common, "--classes", "normal,pneumonia", "--bootstrap", "0",
                     "--out", str(tmp_path / f"zs-{name}")]) == 0
    a = json.loads((tmp_path / "zs-onnx" / "result.json").read_text())
    b = json.loads((tmp_path / "zs-torch" / "result.json").read_text())
    assert a["model"] == f"onnx:{out}" and a["metrics"] == pytest.approx(b["metrics"], abs=1e-4)
    assert main(["index", "--model", f"onnx:{out}", *common, "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--text", "pneumonia", "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["finetune", "--model", f"onnx:{out}", "--data", str(folder), "--quiet", "--workers", "0",
                 "--out", str(tmp_path / "ft")]) == 2
    assert "runs inference only" in capsys.readouterr().err
    shots = make_split_folders(tmp_path / "shots", {"train": 2, "test": 2})
    assert main(["adapt", "--model", f"onnx:{out}", "--data", str(shots), "--quiet", "--workers", "0", "--method",
                 "coop", "--shots", "2", "--out", str(tmp_path / "coop")]) == 2  # the graph takes token ids only
    assert "does not take word embeddings" in capsys.readouterr().err


def test_int8_export_is_measured_not_bounded(tiny_clip_dir, tmp_path):
    manifest = _export(f"hf:{tiny_clip_dir}", tmp_path / "int8", "--quantize", "int8")
    v = manifest["verification"]
    assert manifest["quantize"] == "int8" and v["tolerance"] is None and v["image_max_abs_diff"] > 0
    assert not (tmp_path / "int8" / "image.onnx.data").exists()
    model = create_model(f"onnx:{tmp_path / 'int8'}")
    assert model.encode_text(model.tokenize(["x"])).shape == (1, 32)


def test_openai_checkpoint_exports(tmp_path):
    from transformers import CLIPModel

    from helpers import tiny_clip_config
    from medvlkit.models.openai_ckpt import hf_to_openai_state_dict

    torch.manual_seed(0)
    torch.save(hf_to_openai_state_dict(CLIPModel(tiny_clip_config())), tmp_path / "c.pt")
    write_clip_tokenizer(tmp_path)
    manifest = _export(f"openai-ckpt:{tmp_path / 'c.pt'}", tmp_path / "out")
    assert manifest["verification"]["text_max_abs_diff"] <= TOLERANCE


def test_a_wrong_export_is_refused_and_removed(tiny_clip_dir, tmp_path, monkeypatch):
    """The verification is real: a graph that computes something else fails the export and leaves no folder."""
    import medvlkit.tasks.export as export

    real = export._ImageTower.forward
    monkeypatch.setattr(export._ImageTower, "forward", lambda self, pixels: real(self, pixels.flip(-1)))
    with pytest.raises(export.MedvlkitError, match="differ from PyTorch"):
        export_onnx(create_model(f"hf:{tiny_clip_dir}"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_folders_that_are_not_exports_get_one_line_errors(tiny_onnx, tmp_path, capsys):
    _, out = tiny_onnx
    cases = {}
    (tmp_path / "empty").mkdir()
    cases["empty"] = "no manifest.json"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    cases["foreign"] = "not a medvlkit ONNX manifest"
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "image.onnx").write_bytes((broken / "image.onnx").read_bytes()[:500])
    cases["broken"] = "image.onnx cannot be loaded"
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "manifest.json").write_text("{not json")
    cases["garbled"] = "not valid JSON"
    for name, message in cases.items():
        assert main(["embed", "--model", f"onnx:{tmp_path / name}", "--data", str(tmp_path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (name, err)
    assert main(["export", "--model", f"onnx:{out}", "--out", str(tmp_path / "again")]) == 2
    assert main(["export", "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "--quantize", "int4", "--out", str(tmp_path / "y")]) == 2
    assert main(["zeroshot", "--model", f"onnx:{out}", "--precision", "bf16", "--data", str(tmp_path), "--classes",
                 "a,b"]) == 2


def test_serve_runs_an_onnx_model(tiny_onnx):
    from fastapi.testclient import TestClient

    from medvlkit.apps.serve.app import create_app
    from medvlkit.apps.serve.engine import ServeEngine

    _, out = tiny_onnx
    engine = ServeEngine(create_model(f"onnx:{out}"), ["pneumonia"], cache=False)
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with TestClient(create_app(engine)) as c:
        r = c.post("/zeroshot", files=[("files", ("a.png", buf.getvalue(), "image/png"))])
        assert r.status_code == 200 and r.json()["model"] == f"onnx:{out}"


@pytest.mark.data
def test_lite_onnx_zeroshot_on_real_xrays_equals_pytorch(data_root, tmp_path):
    """The embedded model exported and run on 60 real chest X-rays: the same predictions as PyTorch."""
    manifest = _export("lite", tmp_path / "lite")
    assert manifest["verification"]["image_max_abs_diff"] <= TOLERANCE
    assert manifest["validated_gate_threshold"] == create_model("lite").validated_gate_threshold
    test = data_root / "chest_xray_pneumonia" / "test"
    folder = tmp_path / "cxr"
    for cls in ("NORMAL", "PNEUMONIA"):
        (folder / cls).mkdir(parents=True)
        for p in sorted((test / cls).glob("*.jpeg"))[:30]:
            (folder / cls / p.name).symlink_to(p)
    preds = {}
    for spec, name in ((f"onnx:{tmp_path / 'lite'}", "onnx"), ("lite", "torch")):
        assert main(["zeroshot", "--model", spec, "--data", str(folder), "--prompts", "pneumonia", "--quiet",
                     "--bootstrap", "0", "--workers", "0", "--out", str(tmp_path / name)]) == 0
        lines = (tmp_path / name / "predictions.csv").read_text().splitlines()
        preds[name] = lines
    header = preds["onnx"][0].split(",")
    cols = [i for i, h in enumerate(header) if h.startswith("prob_")]
    a = np.array([[float(r.split(",")[i]) for i in cols] for r in preds["onnx"][1:]])
    b = np.array([[float(r.split(",")[i]) for i in cols] for r in preds["torch"][1:]])
    assert a.shape == (60, 2) and (a.argmax(1) == b.argmax(1)).all() and np.abs(a - b).max() < 1e-4


def test_finetuned_lora_model_exports_merged(tiny_clip_dir, tmp_path):
    folder = make_split_folders(tmp_path / "data", {"train": 4, "val": 4, "test": 4})
    assert main(["finetune", "--model", f"hf:{tiny_clip_dir}", "--data", str(folder), "--lora", "r=2,alpha=4",
                 "--max-steps", "2", "--batch-size", "4", "--quiet", "--workers", "0", "--bootstrap", "0",
                 "--out", str(tmp_path / "ft")]) == 0
    manifest = _export(f"ft:{tmp_path / 'ft' / 'best'}", tmp_path / "onnx")
    assert manifest["model"].startswith("ft:") and manifest["verification"]["image_max_abs_diff"] <= TOLERANCE
    ref, onnx = create_model(f"ft:{tmp_path / 'ft' / 'best'}"), create_model(f"onnx:{tmp_path / 'onnx'}")
    base = create_model(f"hf:{tiny_clip_dir}")
    texts = ["pneumonia", "normal lungs"]
    with torch.no_grad():
        want, untuned = ref.encode_text(ref.tokenize(texts)).numpy(), base.encode_text(base.tokenize(texts)).numpy()
    got = onnx.encode_text(onnx.tokenize(texts)).numpy()
    assert np.abs(got - want).max() <= TOLERANCE < np.abs(got - untuned).max()  # the tuned weights, not the base's
