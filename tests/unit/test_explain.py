"""Heatmaps: Grad-CAM against a hand computation on a tiny CNN, attention rollout against its recurrence on a tiny
ViT, and the properties every map must have (shape, range, determinism, dependence on the prompt)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import make_image
from medvlkit import create_model
from medvlkit.apps.cli import main
from medvlkit.models.base import ModelBase, l2_normalize
from medvlkit.models.preprocess import PreprocessCfg
from medvlkit.tasks.explain import ClassTargets, heatmaps, method_for, rollout_relevance


class TinyCNN(ModelBase):
    """conv (3 -> 3 channels) -> feature map (3, 4, 4) -> spatial mean -> linear (3 -> 2)."""

    def __init__(self) -> None:
        super().__init__(PreprocessCfg(image_size=16))
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 4, stride=4)
        self.proj = torch.nn.Linear(3, 2, bias=False)
        self.name = "tiny-cnn"

    def image_feature_map(self, pixels):
        return self.conv(pixels)

    def embed_feature_map(self, fmap):
        return self.proj(fmap.mean(dim=(2, 3)))

    def encode_image(self, pixels, normalize=True):
        z = self.embed_feature_map(self.image_feature_map(pixels))
        return l2_normalize(z) if normalize else z


def test_gradcam_equals_the_hand_computation():
    model = TinyCNN().eval()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    v = np.array([[0.6, 0.8], [1.0, -0.5]], dtype=np.float32)
    maps, scores = heatmaps(model, pixels, ClassTargets(["a", "b"], v, "softmax"))
    with torch.no_grad():
        a = model.conv(pixels)  # (2, 3, 4, 4)
        z = model.proj(a.mean(dim=(2, 3)))  # (2, 2)
        norm = z.norm(dim=1, keepdim=True)
        zhat = z / norm
        for c in range(2):
            vc = torch.from_numpy(v[c])
            ds_dz = (vc - (zhat @ vc)[:, None] * zhat) / norm  # d(zhat . v)/dz
            alpha = (ds_dz @ model.proj.weight) / 16  # d s / d A_kij, the same for every (i, j)
            cam = torch.relu((alpha[:, :, None, None] * a).sum(1))
            cam = F.interpolate(cam[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
            want = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            np.testing.assert_allclose(maps[:, c], want.numpy(), atol=1e-5)
            np.testing.assert_allclose(scores[:, c], (zhat @ vc).numpy(), atol=1e-6)
    assert method_for(model) == "gradcam"


def test_rollout_follows_its_recurrence():
    rng = np.random.default_rng(0)
    attn = [torch.from_numpy(rng.random((2, 3, 5, 5), dtype=np.float32)) for _ in range(3)]
    grads = [torch.from_numpy(rng.standard_normal((2, 3, 5, 5)).astype(np.float32)) for _ in range(3)]
    got = rollout_relevance(attn, grads).numpy()
    r = np.broadcast_to(np.eye(5), (2, 5, 5)).copy()
    for a, g in zip(attn, grads):
        r = r + np.maximum(g.numpy() * a.numpy(), 0).mean(1) @ r
    np.testing.assert_allclose(got, r, rtol=1e-5)
    # with zero gradients nothing propagates: the relevance stays the identity (each token explains itself)
    np.testing.assert_allclose(rollout_relevance(attn, [g * 0 for g in grads]).numpy(), np.broadcast_to(np.eye(5),
                                                                                                     (2, 5, 5)))


def test_vit_rollout_maps(tiny_clip_dir):
    model = create_model(f"hf:{tiny_clip_dir}")
    before = model.model.config._attn_implementation
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    v = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    targets = ClassTargets(["a", "b", "c"], v, "softmax")
    maps, scores = heatmaps(model, pixels, targets)
    again, _ = heatmaps(model, pixels, targets)
    assert method_for(model) == "rollout" and maps.shape == (2, 3, 32, 32)
    assert maps.min() >= 0 and np.allclose(maps.reshape(6, -1).max(1), 1) and np.array_equal(maps, again)
    assert not np.allclose(maps[:, 0], maps[:, 1])  # another prompt, another map
    with torch.no_grad():
        want = model.encode_image(pixels).numpy() @ v.T
    np.testing.assert_allclose(scores, want, atol=1e-5)  # the explained score is the zero-shot similarity
    assert model.model.config._attn_implementation == before  # the eager switch is undone


@pytest.mark.slow
def test_lite_gradcam_maps_and_the_cli(lite, tmp_path):
    folder = tmp_path / "imgs"
    for i, cls in enumerate(("NORMAL", "PNEUMONIA")):
        make_image(folder / cls / "a.png", seed=i, size=(300, 260))
    out = tmp_path / "out"
    assert main(["explain", "--data", str(folder), "--prompts", "pneumonia", "--out", str(out), "-q"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "explain" and result["method"] == "gradcam" and result["metrics"]["n_images"] == 2
    maps = [np.load(out / r["map"]) for r in result["images"]]
    assert all(m.shape == (2, 224, 224) and 0 <= m.min() and m.max() <= 1 for m in maps)
    assert all((out / p).is_file() for r in result["images"] for p in r["overlays"].values())
    assert not np.allclose(maps[0][0], maps[0][1])
    assert main(["explain", "--data", str(folder), "--text", "consolidation", "--limit", "1", "--out",
                 str(tmp_path / "t"), "-q"]) == 0
    again = json.loads((tmp_path / "t" / "result.json").read_text())
    assert again["classes"] == ["consolidation"] and again["metrics"]["n_images"] == 1
    assert np.array_equal(np.load(tmp_path / "t" / again["images"][0]["map"])[0].shape, (224, 224))
    assert main(["explain", "--data", str(folder), "--text", "x", "--prompts", "pneumonia"]) == 2
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("most confident") == 2 and page.count("data:image/jpeg") == 2 * 2 * 2  # 2 classes x 2 x 2


def test_log_prob_target_explains_the_softmax_decision():
    model = TinyCNN().eval()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    v = np.array([[0.6, 0.8], [1.0, -0.5]], dtype=np.float32)
    maps, scores = heatmaps(model, pixels, ClassTargets(["a", "b"], v, "softmax", "log_prob", 10.0))
    sims, _ = heatmaps(model, pixels, ClassTargets(["a", "b"], v, "softmax"))
    with torch.no_grad():
        want = torch.log_softmax(10.0 * model.encode_image(pixels) @ torch.from_numpy(v).T, dim=1).numpy()
    np.testing.assert_allclose(scores, want, atol=1e-5)
    assert maps.shape == sims.shape == (2, 2, 16, 16) and not np.allclose(maps, sims)


def test_gradcam_is_deterministic_and_prompt_dependent():
    model = TinyCNN().eval()
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    v = np.array([[0.6, 0.8], [1.0, -0.5]], dtype=np.float32)
    a, _ = heatmaps(model, pixels, ClassTargets(["a", "b"], v, "softmax"))
    b, _ = heatmaps(model, pixels, ClassTargets(["a", "b"], v, "softmax"))
    only, _ = heatmaps(model, pixels, ClassTargets(["a", "b"], v, "softmax"), classes=[1])
    assert np.array_equal(a, b) and not np.allclose(a[0, 0], a[0, 1]) and np.array_equal(only[:, 0], a[:, 1])
