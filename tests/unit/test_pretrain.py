"""Pretraining pieces on synthetic data, and a tiny real run of the loop with checkpoints and --resume."""

import random

import numpy as np
import pytest
import torch

from helpers import make_image
from medvlkit import MedvlkitError
from medvlkit.engine.losses import contrastive_loss, pair_targets
from medvlkit.tasks.pretrain.corpus import Pair, cxr_patient, sample_epoch


def test_contrastive_loss_equals_clip_loss_with_identity_targets():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    want = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(6))
                  + torch.nn.functional.cross_entropy(logits.T, torch.arange(6)))
    torch.testing.assert_close(contrastive_loss(img, txt, scale, torch.eye(6)), want)


def test_pair_targets_share_mass_over_groups_and_identical_captions():
    t = pair_targets(["a", "a", "b", "c"], ["x", "y", "z", "z"])
    np.testing.assert_allclose(t.sum(1), 1.0)
    assert t[0, 1] == 0.5 and t[2, 3] == 0.5 and t[0, 2] == 0


def test_sample_epoch_caps_each_source():
    pairs = [Pair(f"i{i}", ["c"], "g", "cxr" if i < 90 else "photo") for i in range(100)]
    plan = sample_epoch(pairs, 20, random.Random(0))
    srcs = [pairs[i].source for i, _ in plan]
    assert srcs.count("cxr") == 20 and srcs.count("photo") == 10


def test_cxr_patient_ids():
    assert cxr_patient("/x/person1000_bacteria_2931.jpeg") == "person1000"
    assert cxr_patient("/x/NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert cxr_patient("/x/IM-0115-0001.jpeg") == "IM-0115"


def _synthetic_corpus(root):
    pairs = []
    for i in range(6):
        lab = "pneumonia" if i % 2 else "normal"
        pairs.append(Pair(str(make_image(root / f"cxr{i}.png", seed=i, mode="L")), [f"chest x-ray, {lab}"],
                          f"cxr/{lab}", "cxr", {"label": lab}))
        kind = "CT" if i % 2 else "MR"
        pairs.append(Pair(str(make_image(root / f"mp{i}.png", seed=10 + i, mode="L")), [f"{kind} caption {i}"],
                          f"medpix/{i}", "medpix", {"type": kind}))
        pairs.append(Pair(str(make_image(root / f"ph{i}.png", seed=20 + i)), ["a photo."], "photo/x", "photo"))
    return pairs


def test_real_corpus_never_reads_test_splits(data_root):
    from medvlkit.tasks.pretrain.corpus import build_corpus

    train, val = build_corpus(data_root, "train"), build_corpus(data_root, "val")
    items = [p.item for p in train + val]
    assert not any("/test/" in it or "::test_" in it or "descriptions_test" in it for it in items)
    assert not any("breastmnist" in it for it in items)  # held out entirely
    train_patients = {cxr_patient(p.item) for p in train if p.source == "cxr"}
    val_patients = {cxr_patient(p.item) for p in val if p.source == "cxr"}
    assert train_patients and val_patients and not train_patients & val_patients
    assert any(p.item.endswith("@@gray") for p in train)
    with pytest.raises(MedvlkitError, match="never used"):
        build_corpus(data_root, "test")
