import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_image_folder
from medvlkit import MedvlkitError, create_model, embed_images, embed_texts, load_dataset, load_prompt_set
from medvlkit.data.prompts import list_prompt_sets, prompt_set_from_classes
from medvlkit.tasks.zeroshot import answer, class_vectors, pos_neg_probs, softmax_probs, zeroshot_classify


@pytest.fixture(scope="module")
def model(tiny_clip_dir):
    return create_model(f"hf:{tiny_clip_dir}")


def test_softmax_uses_prompt_ensemble_and_model_temperature(model):
    ps = load_prompt_set("pneumonia")
    emb = np.random.default_rng(0).normal(size=(4, model.embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    probs = answer(emb, class_vectors(model, ps, "softmax"), model.logit_scale).probs
    manual = []
    for c in ps.classes:
        t = embed_texts(model, [tpl.format(p) for p in c.positive for tpl in ps.templates]).mean(0)
        manual.append(t / np.linalg.norm(t))
    logits = model.logit_scale * emb @ np.stack(manual).T
    want = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_pos_neg_is_two_way_softmax():
    rng = np.random.default_rng(1)
    img, pos, neg = (rng.normal(size=s) for s in ((5, 8), (3, 8), (3, 8)))
    p = pos_neg_probs(img, pos, neg, 10.0)
    for c in range(3):
        two = np.stack([10 * img @ pos[c], 10 * img @ neg[c]], 1)
        np.testing.assert_allclose(p[:, c], np.exp(two[:, 0]) / np.exp(two).sum(1), rtol=1e-6)
    assert softmax_probs(img, pos, 1.0).shape == (5, 3)


def test_no_finding_is_not_inverted():
    ps = prompt_set_from_classes(["Atelectasis", "No Finding"], mode="pos_neg")
    assert ps.classes[0].negative == ["no atelectasis"]
    assert ps.classes[1].positive == ["no finding"] and ps.classes[1].negative == ["abnormal findings"]
    shipped = load_prompt_set("chest_xray_findings")
    nf = next(c for c in shipped.classes if c.name == "No Finding")
    assert not any("no no" in t.lower() for t in shipped.texts(nf.negative))


def test_prompt_sets_ship_and_select_by_alias():
    assert {"pneumonia", "chest_xray_findings", "covid_qu_ex", "modality"} <= set(list_prompt_sets())
    for name in list_prompt_sets():
        load_prompt_set(name)
    sel = load_prompt_set("pneumonia").select(["PNEUMONIA", "NORMAL"])
    assert sel.classnames == ["PNEUMONIA", "NORMAL"] and "pneumonia" in sel.classes[0].positive
    assert load_prompt_set("chest_xray_findings").select(["Effusion", "Infiltration"]).classnames == [
        "Effusion", "Infiltration"]
    with pytest.raises(MedvlkitError, match="no prompts for class"):
        load_prompt_set("pneumonia").select(["NORMAL", "TUBERCULOSIS"])
    with pytest.raises(MedvlkitError, match="unknown prompt set"):
        load_prompt_set("nope")


def test_zeroshot_on_folder(model, tmp_path):
    ds = load_dataset(make_image_folder(tmp_path, {"NORMAL": 3, "PNEUMONIA": 2}))
    res = zeroshot_classify(model, ds, load_prompt_set("pneumonia"), cache=False, progress=False)
    assert res.probs.shape == (5, 2) and res.classnames == ["NORMAL", "PNEUMONIA"]
    assert res.labels.tolist() == ds.labels.tolist()
    with pytest.raises(MedvlkitError, match="pos_neg"):
        ml = ds.subset([0, 1])
        ml.multilabel = True
        zeroshot_classify(model, ml, load_prompt_set("pneumonia"), mode="softmax", cache=False)


def test_cache_reuses_and_invalidates(model, tmp_path):
    ds = load_dataset(make_image_folder(tmp_path / "imgs", {"a": 3}))
    first = embed_images(model, ds, batch_size=2, progress=False)
    second = embed_images(model, ds, batch_size=2, progress=False)
    assert first.n_cached == 0 and second.n_cached == 3
    np.testing.assert_allclose(first.vectors, second.vectors, rtol=1e-6)
    st = os.stat(ds.items[0])
    os.utime(ds.items[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    assert embed_images(model, ds, progress=False).n_cached == 2


def test_workers_give_same_embeddings(model, tmp_path):
    ds = load_dataset(make_image_folder(tmp_path, {"a": 3, "b": 2}))
    a = embed_images(model, ds, num_workers=0, cache=False, progress=False)
    b = embed_images(model, ds, num_workers=2, cache=False, progress=False, batch_size=2)
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        direct = model.encode_image(model.preprocess([ds.load_image(0)])).numpy()
    np.testing.assert_allclose(a.vectors[0], direct[0], rtol=1e-5, atol=1e-6)


def test_unreadable_images_fail_or_skip(model, tmp_path):
    root = make_image_folder(tmp_path, {"a": 2})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    ds = load_dataset(root)
    from medvlkit import ImageReadError

    with pytest.raises(ImageReadError, match="broken.png"):
        embed_images(model, ds, cache=False, progress=False)
    emb = embed_images(model, ds, cache=False, progress=False, on_error="skip")
    assert len(emb.items) == 2 and len(emb.skipped) == 1 and emb.skipped[0][0].endswith("broken.png")
    assert emb.indices.tolist() == [1, 2]  # sorted: broken.png comes first
    with pytest.raises(MedvlkitError, match="on-error"):
        embed_images(model, ds, on_error="ignore")


def test_prompt_vectors_are_cached_per_weights(tmp_path, monkeypatch):
    """A zero-shot rerun reads the prompts' vectors from the text cache; other weights (another file) recompute;
    class vectors without cache (fine-tuning's validation) never read it."""
    import shutil

    from helpers import save_tiny_clip

    ds = load_dataset(make_image_folder(tmp_path / "imgs", {"NORMAL": 2, "PNEUMONIA": 2}))
    folder = save_tiny_clip(tmp_path / "m")
    first = zeroshot_classify(create_model(f"hf:{folder}"), ds, load_prompt_set("pneumonia"), progress=False)
    cached = list(Path(os.environ["MEDVLKIT_CACHE"]).glob("texts/*/*.npy"))  # conftest: a cache per test
    assert len(cached) == 2 + 6  # one file per class ensemble (NORMAL, PNEUMONIA), and the domain check's modalities
    warm = create_model(f"hf:{folder}")
    monkeypatch.setattr(warm, "encode_text", lambda *a, **k: pytest.fail("prompts re-encoded despite the cache"))
    second = zeroshot_classify(warm, ds, load_prompt_set("pneumonia"), progress=False)
    np.testing.assert_array_equal(first.log_probs, second.log_probs)
    with pytest.raises(pytest.fail.Exception):
        class_vectors(warm, load_prompt_set("pneumonia").select(ds.classnames))
    other = tmp_path / "other"
    shutil.copytree(save_tiny_clip(tmp_path / "m2", seed=1), other)
    calls = []
    changed = create_model(f"hf:{other}")
    real = changed.encode_text
    monkeypatch.setattr(changed, "encode_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    zeroshot_classify(changed, ds, load_prompt_set("pneumonia"), progress=False)
    assert calls  # other weights: encoded, not served another model's vectors
