import json
from pathlib import Path

import numpy as np
import pytest

from helpers import make_image_folder, save_tiny_clip
from medvlkit import create_model
from medvlkit.apps.cli import main
from medvlkit.tasks.retrieval import first_relevant_ranks, retrieval_metrics


def test_index_then_search_by_image_and_text(tiny_clip_dir, tmp_path, capsys):
    make_image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    idx = tmp_path / "idx"
    assert main(["index", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "imgs"), "--out", str(idx), "-q",
                 "--workers", "0"]) == 0
    meta = json.loads((idx / "index.json").read_text())
    assert meta["n"] == 6 and meta["model_fingerprint"] == create_model(f"hf:{tiny_clip_dir}").fingerprint()
    capsys.readouterr()
    query = tmp_path / "imgs" / "b" / "img1.png"
    assert main(["search", "--index", str(idx), "--image", str(query), "-k", "3", "-m", f"hf:{tiny_clip_dir}",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["file"] == str(query.resolve()) and hits[0]["score"] == pytest.approx(1, abs=1e-5)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert main(["search", "--index", str(idx), "--text", "pneumonia", "-k", "10", "-m", f"hf:{tiny_clip_dir}",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6  # k is capped at the index size


def test_search_refuses_another_model(tiny_clip_dir, tmp_path, capsys):
    make_image_folder(tmp_path / "imgs", {"a": 2})
    idx = tmp_path / "idx"
    assert main(["index", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "imgs"), "--out", str(idx), "-q",
                 "--workers", "0"]) == 0
    other = save_tiny_clip(tmp_path / "other", seed=1)
    assert main(["search", "--index", str(idx), "--text", "x", "-m", f"hf:{other}"]) == 2
    assert "was built with model" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path), "--text", "x", "-m", f"hf:{other}"]) == 2
    assert main(["search", "--index", str(idx), "-m", f"hf:{other}"]) == 2


def test_retrieval_metrics_with_duplicate_captions():
    sims = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.7, 0.6]])
    rel = np.eye(3, dtype=bool)
    assert first_relevant_ranks(sims, rel).tolist() == [1, 2, 2]
    emb = np.eye(3)
    m, ci = retrieval_metrics(emb, emb, ["a", "b", "c"], n_bootstrap=10)
    assert m["image_to_text_recall@1"] == 1 and m["text_to_image_median_rank"] == 1 and "image_to_text_recall@5" in ci
    # two images share one caption text: either copy of the caption counts as a hit
    txt = np.array([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    m, _ = retrieval_metrics(np.eye(3), txt, ["same", "same", "other"], n_bootstrap=0)
    assert m["image_to_text_recall@1"] == 1.0


def test_retrieve_cli_on_captions(tiny_clip_dir, tmp_path):
    import torch
    from PIL import Image

    from helpers import make_image
    from medvlkit import create_model

    rows, texts = [], [f"finding number {i}" for i in range(12)]
    for i, text in enumerate(texts):
        make_image(tmp_path / "im" / f"{i}.png", seed=i)
        rows.append(json.dumps({"image": f"im/{i}.png", "text": text}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "r"
    assert main(["retrieve", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "pairs.jsonl"), "-q", "--workers",
                 "0", "--bootstrap", "20", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    # recomputed here from the model's own embeddings: the rank of each image's caption among 12
    m = create_model(f"hf:{tiny_clip_dir}")
    with torch.no_grad():
        img = m.encode_image(m.preprocess([Image.open(tmp_path / "im" / f"{i}.png") for i in range(12)])).numpy()
        txt = m.encode_text(m.tokenize(texts)).numpy()
    sims = img @ txt.T
    ranks = (sims > np.diag(sims)[:, None]).sum(1) + 1
    assert res["task"] == "zeroshot_retrieval"
    for k in (1, 5):
        assert res["metrics"][f"image_to_text_recall@{k}"] == pytest.approx(float(np.mean(ranks <= k)))
    assert main(["retrieve", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "im"), "-q", "--out", str(out)]) == 2


def test_search_uses_the_index_model_and_shows_labels(tiny_clip_dir, tmp_path, capsys):
    make_image_folder(tmp_path / "imgs", {"effusion": 2, "normal": 2})
    idx = tmp_path / "idx"
    assert main(["index", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "imgs"), "--out", str(idx), "-q",
                 "--workers", "0"]) == 0
    assert json.loads((idx / "result.json").read_text())["metrics"]["n_images"] == 4
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--text", "effusion", "-k", "4", "--json"]) == 0  # no --model
    hits = json.loads(capsys.readouterr().out)
    assert {h["label"] for h in hits} == {"effusion", "normal"}
    for h in hits:  # the file as a person finds it: relative to the indexed folder, class folder included
        assert h["name"] == f"{h['label']}/{Path(h['file']).name}"
    assert main(["search", "--index", str(idx), "--text", "effusion", "-k", "2"]) == 0
    shown = capsys.readouterr().out
    assert f"{hits[0]['label']}/" in shown and hits[0]["label"] in shown


def test_relative_names_of_items():
    from medvlkit.tasks.search import relative_names

    assert relative_names(["/d/a/x.png", "/d/b/c/y.png"]) == ["a/x.png", "b/c/y.png"]
    assert relative_names(["/d/a/x.png"]) == ["x.png"]
    assert relative_names(["/d/m.npz::test_images[3]", "/d/m.npz::test_images[4]"]) == \
        ["m.npz::test_images[3]", "m.npz::test_images[4]"]


def test_cli_small_things(tiny_clip_dir, tmp_path, capsys):
    """--debug is in --help; a binary run prints sensitivity, specificity, its decision rule and the matrix."""
    assert main(["--help"]) == 0
    assert "--debug" in capsys.readouterr().out
    make_image_folder(tmp_path / "d" / "test", {"NORMAL": 2, "PNEUMONIA": 2})
    assert main(["zeroshot", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "d"), "--split", "test", "-p",
                 "pneumonia", "-q", "--workers", "0", "--bootstrap", "0", "--out", str(tmp_path / "z")]) == 0
    out = capsys.readouterr().out
    assert "sensitivity" in out and "specificity" in out and "true \\ predicted" in out and "argmax" in out


def test_approximate_index_kinds_report_their_recall_against_exact(tmp_path):
    """HNSW and IVF-PQ on 2,000 clustered unit vectors: built, saved, reloaded with their search parameters, and
    their recall@10 against the exact index measured (both near-exact: IVF-PQ re-ranks its candidates exactly)."""
    import faiss

    from medvlkit.tasks.search import make_index, recall_vs_exact

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 64))
    x = (centres[rng.integers(0, 40, 2000)] + 0.3 * rng.normal(size=(2000, 64))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat, _ = make_index(x, "flat")
    assert recall_vs_exact(flat, x) == 1.0
    hnsw, params = make_index(x, "hnsw")
    assert params == {"links": 32, "ef_search": 128} and recall_vs_exact(hnsw, x) >= 0.95
    ivf, params = make_index(x, "ivf")
    assert params == {"nlist": 51, "pq_bytes": 16, "nprobe": 16, "refine_k_factor": 10}
    assert recall_vs_exact(ivf, x) >= 0.9  # PQ candidates re-ranked exactly
    faiss.write_index(ivf, str(tmp_path / "ivf.faiss"))
    again = faiss.read_index(str(tmp_path / "ivf.faiss"))
    assert faiss.extract_index_ivf(again).nprobe == 16 and recall_vs_exact(again, x) == recall_vs_exact(ivf, x)
    with pytest.raises(Exception, match="at least 1024 vectors"):
        make_index(x[:100], "ivf")


def test_index_kind_through_the_cli(tiny_clip_dir, tmp_path, capsys):
    make_image_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    idx = tmp_path / "idx"
    assert main(["index", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "imgs"), "--out", str(idx), "-q",
                 "--workers", "0", "--kind", "hnsw"]) == 0
    res = json.loads((idx / "result.json").read_text())
    assert json.loads((idx / "index.json").read_text())["kind"] == "hnsw" and res["metrics"]["recall@10_vs_exact"] == 1
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--text", "x", "-k", "3", "-m", f"hf:{tiny_clip_dir}", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["index", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "imgs"), "--out", str(tmp_path / "x"),
                 "--kind", "annoy"]) == 2
    assert "--kind annoy" in capsys.readouterr().err
