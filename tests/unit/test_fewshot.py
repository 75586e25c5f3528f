"""Few-shot methods against hand computations on tiny data (medvlkit.engine.fewshot)."""

import math

import numpy as np
import pytest

from medvlkit.engine.fewshot import (
    ALPHAS,
    BETAS,
    TIP_DEFAULTS,
    FewShotAdapter,
    clap_lambdas,
    fit_clap,
    fit_fewshot,
    fit_tip_keys,
    search_tip,
    split_shots,
    tip_logits,
)
from medvlkit.errors import MedvlkitError


def unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def data(seed=0, n_per_class=4, d=6, c=3):
    rng = np.random.default_rng(seed)
    text = unit(rng.normal(size=(c, d)))
    y = np.repeat(np.arange(c), n_per_class)
    x = unit(text[y] + 0.8 * rng.normal(size=(len(y), d)))
    return x, y, text


def test_tip_logits_by_hand():
    x, y, text = data()
    keys, values = x[:5], np.eye(3)[y[:5]]
    got = tip_logits(x[5:7], text, keys, values, scale=20.0, alpha=1.5, beta=4.0)
    for i, xi in enumerate(x[5:7]):
        for c in range(3):
            cache = sum(math.exp(-4.0 * (1 - float(xi @ k))) * values[j, c] for j, k in enumerate(keys))
            assert got[i, c] == pytest.approx(20.0 * float(xi @ text[c]) + 1.5 * cache, rel=1e-12)


def test_split_shots_is_per_class_disjoint_and_seeded():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    fit, val = split_shots(y, seed=3)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(10)) and not set(fit) & set(val)
    assert [int((y[val] == c).sum()) for c in range(3)] == [2, 2, 1]
    assert np.array_equal(split_shots(y, 3)[1], val)
    assert len(split_shots(np.array([0, 1, 2]), 0)[1]) == 0  # one shot per class: nothing to validate on


def test_search_tip_takes_the_grid_point_a_loop_finds():
    x, y, text = data(seed=1)
    keys, values = x[::2], np.eye(3)[y[::2]]
    best, acc = search_tip(x[1::2], y[1::2], text, keys, values, 10.0)
    scores = {}
    for beta in BETAS:
        for alpha in ALPHAS:
            logits = tip_logits(x[1::2], text, keys, values, 10.0, alpha, beta)
            lp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - \
                logits.max(1, keepdims=True)
            scores[(alpha, beta)] = ((logits.argmax(1) == y[1::2]).mean(), lp[np.arange(len(lp)), y[1::2]].mean())
    top = max(scores.values())
    assert acc == top[0] and scores[(best["alpha"], best["beta"])] == pytest.approx(top)


def test_tip_adapter_one_shot_uses_the_paper_defaults_and_the_cache_is_every_shot():
    x, y, text = data(n_per_class=1)
    ad = fit_fewshot("tip_adapter", x, y, ["a", "b", "c"], text, 10.0)
    assert {k: ad.hyper[k] for k in TIP_DEFAULTS} == TIP_DEFAULTS and "defaults" in ad.hyper["source"]
    x, y, text = data(n_per_class=4)
    ad = fit_fewshot("tip_adapter", x, y, ["a", "b", "c"], text, 10.0)
    assert np.allclose(ad.arrays["keys"], x) and np.array_equal(ad.arrays["values"], np.eye(3)[y])
    assert "6 validation shots" in ad.hyper["source"]


def test_tip_adapter_f_trains_only_the_keys():
    import torch

    x, y, text = data(seed=2)
    text_before = text.copy()
    keys = fit_tip_keys(x, y, text, 10.0, 1.0, 5.5, seed=0, epochs=50)
    assert not np.allclose(keys, x) and np.array_equal(text, text_before)

    def loss(k):
        logits = tip_logits(x, text, k, np.eye(3)[y], 10.0, 1.0, 5.5)
        return float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))

    assert loss(keys) < loss(x)


def test_clap_lambdas_by_hand_and_the_penalty_holds_the_weights():
    x, y, text = data(seed=4)
    lam = clap_lambdas(x, y, text, 10.0)
    logits = 10.0 * x @ text.T
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert lam == pytest.approx([p[y == c, c].mean() for c in range(3)], rel=1e-12)
    w, _ = fit_clap(x, y, text, 10.0, seed=0, epochs=30)
    assert np.linalg.norm(w - text) > 0  # it moved
    ce = lambda W: -np.mean(np.log(np.exp(10 * x @ W.T)[np.arange(len(y)), y] / np.exp(10 * x @ W.T).sum(1)))  # noqa: E731
    assert ce(w) < ce(text)


def test_an_adapter_saves_and_loads_to_the_same_answers(tmp_path):
    x, y, text = data(seed=5)
    for method in ("tip_adapter", "clap"):
        ad = fit_fewshot(method, x, y, ["a", "b", "c"], text, 10.0)
        ad.save(tmp_path / f"{method}.npz", {"model": "m", "model_fingerprint": "f"})
        back, header = FewShotAdapter.load(tmp_path / f"{method}.npz")
        assert header["model_fingerprint"] == "f" and back.classnames_ == ["a", "b", "c"]
        assert np.allclose(back.predict_log_proba(x), ad.predict_log_proba(x), atol=1e-6)
    with pytest.raises(MedvlkitError, match="valid options"):
        fit_fewshot("maple", x, y, ["a", "b", "c"], text, 10.0)
    with pytest.raises(MedvlkitError, match="coop needs the model"):
        fit_fewshot("coop", x, y, ["a", "b", "c"], text, 10.0)
    with pytest.raises(MedvlkitError, match="no shots of class c"):
        fit_fewshot("tip_adapter", x[y < 2], y[y < 2], ["a", "b", "c"], text, 10.0)


def test_clip_adapter_by_hand_and_its_training():
    from medvlkit.engine.fewshot import CLIP_ADAPTER_RATIOS, clip_adapter_logits, fit_clip_adapter

    x, y, text = data(seed=6)
    rng = np.random.default_rng(0)
    down, up = rng.normal(size=(6, 1)), rng.normal(size=(1, 6))
    got = clip_adapter_logits(x, text, down, up, 10.0, 0.2)
    f = 0.2 * np.maximum(np.maximum(x @ down, 0) @ up, 0) + 0.8 * x
    assert got == pytest.approx(10.0 * unit(f) @ text.T, rel=1e-12)
    text_before = text.copy()
    down, up = fit_clip_adapter(x, y, text, 10.0, 0.6, seed=0, epochs=100, lr=0.05)
    assert down.shape == (6, 1) and up.shape == (1, 6) and np.array_equal(text, text_before)

    def ce(logits):
        lp = logits - logits.max(1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
        return -lp[np.arange(len(y)), y].mean()

    assert ce(clip_adapter_logits(x, text, down, up, 10.0, 0.6)) < ce(10.0 * x @ text.T)
    x1, y1, t1 = data(n_per_class=1)
    assert fit_fewshot("clip_adapter", x1, y1, ["a", "b", "c"], t1, 10.0).hyper["ratio"] == CLIP_ADAPTER_RATIOS[0]
    ad = fit_fewshot("clip_adapter", x, y, ["a", "b", "c"], text, 10.0)
    assert ad.hyper["ratio"] in CLIP_ADAPTER_RATIOS and "validation shots" in ad.hyper["source"]


@pytest.mark.slow
def test_coop_context_reproduces_the_text_and_only_it_learns(lite):
    """With the context vectors at their initialisation ("a photo of a"), CoOp's class embeddings are lite's own
    embeddings of "a photo of a <class>." (the prompt is assembled right); training moves only the context."""
    import torch

    from medvlkit.engine.fewshot import coop_prompt_encoder, fit_coop

    encode, ctx0 = coop_prompt_encoder(lite, ["pneumonia", "normal lungs"])
    with torch.no_grad():
        ref = lite.encode_text(lite.tokenize(["a photo of a pneumonia.", "a photo of a normal lungs."]))
        assert torch.allclose(encode(ctx0), ref, atol=1e-6)
    rng = np.random.default_rng(0)
    x = unit(ref.numpy()[[0, 0, 1, 1]] + 0.5 * rng.normal(size=(4, ref.shape[1])))
    y = np.array([1, 1, 0, 0])  # the opposite of what the text says: the context must move
    params = list(lite.parameters())
    flags = [p.requires_grad for p in params]
    ctx, weights = fit_coop(x, y, encode, ctx0, lite.logit_scale, seed=0, epochs=5, frozen=params)
    assert all(p.grad is None for p in params) and [p.requires_grad for p in params] == flags
    assert not np.allclose(ctx, ctx0.numpy()) and weights.shape == (2, ref.shape[1])
    assert np.allclose(np.linalg.norm(weights, axis=1), 1, atol=1e-5)


def test_prompt_learning_reaches_the_hf_text_towers(tiny_clip_dir, tiny_siglip_dir, lite):
    """CLIP (start and end tokens), SigLIP (no start token) and lite (BERT): the word embeddings fed back give the
    tower's own output, and CoOp's initial context assembles "a photo of a <class>." where the tokenizer puts it."""
    import torch

    from helpers import assert_prompt_learning_path
    from medvlkit import create_model
    from medvlkit.engine.fewshot import coop_prompt_encoder

    for model in (create_model(f"hf:{tiny_clip_dir}"), create_model(f"hf:{tiny_siglip_dir}"), lite):
        assert_prompt_learning_path(model)
        encode, ctx0 = coop_prompt_encoder(model, ["lung", "heart"])
        with torch.no_grad():
            ref = model.encode_text(model.tokenize(["a photo of a lung.", "a photo of a heart."]))
            torch.testing.assert_close(encode(ctx0), ref, atol=1e-6, rtol=1e-6)
