"""Models from a hub, end to end: the real ``huggingface_hub`` client downloads repositories the tests write from a
hub on 127.0.0.1 (``tests/hubserver.py``), through ``HF_ENDPOINT``. Download, cache, revision pins, offline mode,
gated and missing repositories, ``medvlkit download`` and ``medvlkit models``; the downloaded BiomedCLIP reproduces
its upstream reference outputs."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from helpers import make_split_folders, reference_fixture
from medvlkit import create_model
from medvlkit.apps.cli import main

BIOMEDCLIP_HUB = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"  # the preset's repository


def repo_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def text_vectors(model, texts=("a chest x-ray", "pneumonia", "a normal film")) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_text(model.tokenize(list(texts)))


def test_a_hub_id_downloads_once_pins_revisions_and_is_recorded(hub, tiny_clip_dir, tmp_path, monkeypatch):
    files = repo_files(tiny_clip_dir) | {"modeling_evil.py": b"raise SystemExit('code from the hub ran')",
                                         "pytorch_model.bin": b"not read: safetensors are there" * 64}
    first = hub.add("acme/tiny-clip", files)
    model = create_model("hf:acme/tiny-clip")
    assert torch.equal(text_vectors(model), text_vectors(create_model(f"hf:{tiny_clip_dir}")))
    assert model.hub_source == {"hub": "acme/tiny-clip", "revision": "main", "commit": first,
                                "files": {"model.safetensors": sha256(tiny_clip_dir / "model.safetensors")}}
    fetched = [p for _, p in hub.requests if "/resolve/" in p]
    assert fetched and not any(p.endswith((".py", ".bin")) for p in fetched)  # no code; no pickle beside safetensors

    # another commit on main: the id follows it, a pin keeps the old weights
    weights = load_file(str(tiny_clip_dir / "model.safetensors"))
    name = next(k for k in weights if "token_embedding" in k)
    weights[name] = weights[name] + 0.5
    save_file(weights, str(tmp_path / "model.safetensors"))
    second = hub.add("acme/tiny-clip", files | {"model.safetensors": tmp_path / "model.safetensors"})
    latest, pinned = create_model("hf:acme/tiny-clip"), create_model(f"hf:acme/tiny-clip@{first}")
    assert latest.hub_source["commit"] == second and pinned.hub_source["commit"] == first
    assert pinned.hub_source["revision"] == first
    assert torch.equal(text_vectors(pinned), text_vectors(model))
    assert not torch.allclose(text_vectors(latest), text_vectors(model))
    assert latest.fingerprint() != pinned.fingerprint()  # cached embeddings of one never serve the other

    # offline: the cache only, not one request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    again = create_model("hf:acme/tiny-clip")
    assert again.hub_source["commit"] == second and len(hub.requests) == before
    assert torch.equal(text_vectors(again), text_vectors(latest))


def test_a_run_records_the_commit_and_the_files_sha256(hub, tiny_clip_dir, tmp_path):
    commit = hub.add("acme/tiny-clip", repo_files(tiny_clip_dir))
    data = make_split_folders(tmp_path / "data", {"test": 2})
    out = tmp_path / "run"
    assert main(["embed", "--model", "hf:acme/tiny-clip", "--data", str(data), "--split", "test", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["pretrained_source"]["commit"] == commit
    assert result["pretrained_source"]["files"]["model.safetensors"] == sha256(tiny_clip_dir / "model.safetensors")


def test_what_cannot_be_fetched_is_one_line_naming_the_fix(hub, tiny_clip_dir, tmp_path, capsys, monkeypatch):
    hub.add("acme/tiny-clip", repo_files(tiny_clip_dir))
    hub.add("google/gated-tiny", repo_files(tiny_clip_dir), gated=True)
    cases = [(["download", "hf:acme/missing"], "no such repository"),
             (["download", "hf:acme/tiny-clip@v9"], "no revision 'v9'"),
             (["download", "hf:google/gated-tiny"], "HF_TOKEN"),
             (["--offline", "download", "hf:acme/tiny-clip"], "medvlkit download hf:acme/tiny-clip"),
             (["download", "chexzero"], "not on a hub"),
             (["download", "hf:./a/local/path"], "give a preset")]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err and "Traceback" not in err, (argv, err)
    assert "MEDVLKIT_OFFLINE" not in os.environ  # --offline applied to its own command only
    monkeypatch.setenv("HF_TOKEN", hub.token)  # the terms accepted: the same command works
    assert main(["download", "hf:google/gated-tiny"]) == 0
    assert "at commit" in capsys.readouterr().out


def test_download_ahead_then_offline_reproduces_biomedclip_upstream(hub, capsys, monkeypatch):
    """The BiomedCLIP preset fetched from its (local) hub repository, then used offline, still matches the outputs
    open_clip computed for those weights; ``models`` tells where it is and prints the fetch command on its own line."""
    folder = reference_fixture("open_clip", "biomedclip_tiny")
    hub.add(BIOMEDCLIP_HUB, repo_files(folder))
    assert main(["models", "biomedclip"]) == 0
    assert "\n  medvlkit download biomedclip\n" in capsys.readouterr().out  # a line of its own, never a cut cell
    assert main(["models", "biomedclip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["on_this_machine"] == "downloads on first use"
    assert main(["download", "biomedclip"]) == 0
    assert BIOMEDCLIP_HUB in capsys.readouterr().out
    assert main(["models", "biomedclip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["on_this_machine"] == "in the hub cache"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    inputs, expected = np.load(folder / "inputs.npz"), np.load(folder / "expected.npz")
    for spec in ("biomedclip", f"open_clip:hf-hub:{BIOMEDCLIP_HUB}"):
        model = create_model(spec)
        with torch.no_grad():
            img = model.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy()
            txt = model.encode_text({"input_ids": torch.from_numpy(inputs["input_ids"])}, normalize=False).numpy()
        np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
        assert model.hub_source["hub"] == BIOMEDCLIP_HUB
    assert len(hub.requests) == before
