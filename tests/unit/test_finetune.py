"""Fine-tuning on tiny random CLIPs and generated images: LoRA, freezing, losses, checkpoints and resume."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import make_split_folders
from medvlkit.engine.checkpoint import load_checkpoint
from medvlkit.engine.distributed import World
from medvlkit.engine.losses import pair_targets
from medvlkit.errors import MedvlkitError
from medvlkit.models import create_model
from medvlkit.tasks.finetune import FinetuneConfig, LoraSpec, finetune, merge_lora
from medvlkit.tasks.finetune.data import epoch_batches, pick_captions
from medvlkit.tasks.finetune.loop import prepare_model
from medvlkit.tasks.finetune.lora import add_lora, target_names
from medvlkit.tasks.finetune.steps import class_weights, contrastive_step, supervised_count, supervised_loss


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_split_folders(tmp_path_factory.mktemp("ftdata"), {"train": 8, "val": 8, "test": 8})


def _inputs(model, n=6):
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(n, 3, 32, 32, generator=g)
    return pixels, model.tokenize([f"a chest x-ray number {i}" for i in range(n)])


def test_lora_spec_parse():
    spec = LoraSpec.parse("r=8,alpha=32,dropout=0.05,targets=q_proj,v_proj")
    assert spec == LoraSpec(8, 32.0, 0.05, ("q_proj", "v_proj"))
    assert LoraSpec.parse("default") == LoraSpec()
    assert LoraSpec.parse("targets=fc1").targets == ("fc1",)
    for bad in ("rank=4", "r=x", "r=0", "q_proj"):
        with pytest.raises(MedvlkitError):
            LoraSpec.parse(bad)


def test_lora_targets_follow_frozen_tower(tiny_clip_dir):
    m = create_model(f"hf:{tiny_clip_dir}")
    text_only = target_names(m, ("q_proj", "fc1"), m.tower_modules()["text"])
    assert text_only and all(n.startswith("model.text_model.") for n in text_only)
    with pytest.raises(MedvlkitError, match="layer names there"):
        target_names(m, ("nope",), m.tower_modules()["vision"])


def test_new_adapter_is_identity_and_merge_is_exact(tiny_clip_dir):
    m = create_model(f"hf:{tiny_clip_dir}")
    pixels, tokens = _inputs(m)
    before_img, before_txt = m.encode_image(pixels), m.encode_text(tokens)
    both = m.tower_modules()["vision"] + m.tower_modules()["text"]
    add_lora(m, LoraSpec(r=2, dropout=0.0), target_names(m, m.default_lora_targets, both))
    m.eval()
    assert torch.allclose(m.encode_image(pixels), before_img, atol=1e-6)  # B starts at zero
    assert torch.allclose(m.encode_text(tokens), before_txt, atol=1e-6)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    adapted_img, adapted_txt = m.encode_image(pixels), m.encode_text(tokens)
    assert not torch.allclose(adapted_img, before_img, atol=1e-4)
    assert merge_lora(m) == 2 * 2 * 4  # 2 towers x 2 layers x (q, v, fc1, fc2)
    assert not any("lora" in n for n, _ in m.named_parameters())
    assert torch.allclose(m.encode_image(pixels), adapted_img, atol=1e-5)
    assert torch.allclose(m.encode_text(tokens), adapted_txt, atol=1e-5)


def test_prepare_model_freezes_what_is_asked(tiny_clip_dir):
    m = create_model(f"hf:{tiny_clip_dir}")
    prepare_model(m, FinetuneConfig(freeze="vision"))
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained and not any(n.startswith(("model.vision_model", "model.visual_projection")) for n in trained)
    assert "model.logit_scale" in trained
    m = create_model(f"hf:{tiny_clip_dir}")
    prepare_model(m, FinetuneConfig(lora="r=2,targets=q_proj"))
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained - {"model.logit_scale"} and all("lora_" in n for n in trained - {"model.logit_scale"})
    m = create_model(f"hf:{tiny_clip_dir}")
    prep = prepare_model(m, FinetuneConfig(mode="supervised"), ["a", "b", "c"])
    assert prep.head.linear.out_features == 3
    assert not any(p.requires_grad for p in m.model.text_model.parameters())
    m = create_model(f"hf:{tiny_clip_dir}")
    prep = prepare_model(m, FinetuneConfig(mode="supervised", freeze="vision"), ["a", "b"])
    assert not any(p.requires_grad for p in m.parameters()) and prep.n_trainable == 32 * 2 + 2  # the head alone


def test_supervised_losses_match_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 3, generator=g)
    y = torch.zeros(10, 3)
    y[torch.arange(10), torch.arange(10) % 3] = 1
    w = class_weights(y, multilabel=False)
    loss = supervised_loss(logits, y, False, w, supervised_count(y, False, w))
    assert torch.allclose(loss, F.cross_entropy(logits, y.argmax(1), weight=w))
    ml = torch.tensor([[1, 0, np.nan], [0, 0, 1], [1, np.nan, 0], [0, 1, 1]], dtype=torch.float32)
    pw = class_weights(ml, multilabel=True)
    assert torch.allclose(pw, torch.tensor([1.0, 2.0, 0.5]))
    lg = torch.randn(4, 3, generator=g)
    known = ~torch.isnan(ml)
    expect = F.binary_cross_entropy_with_logits(lg[known], ml[known], pos_weight=pw.expand(4, 3)[known])
    assert torch.allclose(supervised_loss(lg, ml, True, pw, supervised_count(ml, True, pw)), expect)


def test_contrastive_step_gradcache_equals_plain(tiny_clip_dir):
    grads = []
    for chunk in (0, 4):
        m = create_model(f"hf:{tiny_clip_dir}")
        prepare_model(m, FinetuneConfig(lora=None))
        m.train()
        pixels, tokens = _inputs(m, 10)
        targets = torch.from_numpy(pair_targets(list("aabbccddee"), [str(i) for i in range(10)]))
        contrastive_step(m, pixels, tokens, targets, World(), grad_cache=chunk)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-5), k


def test_epoch_plan_is_seeded():
    a, b = epoch_batches(10, 4, seed=1, epoch=0), epoch_batches(10, 4, seed=1, epoch=0)
    assert a == b and len(a) == 2 and all(len(x) == 4 for x in a)
    assert epoch_batches(10, 4, seed=1, epoch=1) != a
    assert epoch_batches(3, 4, 0, 0)[0] and len(epoch_batches(3, 4, 0, 0)[0]) == 3
    pools = [["x", "y", "z"]] * 10
    assert pick_captions(pools, a[0], 1, 0) == pick_captions(pools, a[0], 1, 0)


def _cfg(tiny_clip_dir, folder, out, **kw):
    base = dict(model=f"hf:{tiny_clip_dir}", data=str(folder), out_dir=str(out), lora="r=2,dropout=0", epochs=2,
                batch_size=4, device="cpu", workers=0, warmup=2, save_every=2)
    return FinetuneConfig(**(base | kw))


def test_saved_model_loads_as_ft_spec(tiny_clip_dir, folder, tmp_path):
    out = tmp_path / "sup"
    summary = finetune(_cfg(tiny_clip_dir, folder, out, mode="supervised", lora="r=2,dropout=0", epochs=1),
                       progress=False)
    meta = json.loads((out / "best" / "finetune.json").read_text())
    assert meta["mode"] == "supervised" and meta["classnames"] == ["NORMAL", "PNEUMONIA"] and meta["lora_layers"]
    assert (out / "best" / "adapter.safetensors").is_file()
    merged = create_model(f"ft:{out / 'best'}")
    from medvlkit.tasks.finetune.saved import load_finetuned

    unmerged = load_finetuned(str(out / "best"), merge=False)
    pixels, _ = _inputs(merged)
    assert torch.allclose(merged.encode_image(pixels), unmerged.encode_image(pixels), atol=1e-5)
    assert merged.classifier is not None and merged.classnames == ["NORMAL", "PNEUMONIA"]
    assert merged.fingerprint() != create_model(f"hf:{tiny_clip_dir}").fingerprint()
    assert summary["best"]["epoch"] == 0


def test_bf16_autocast_runs_on_cpu(tiny_clip_dir, folder, tmp_path):
    summary = finetune(_cfg(tiny_clip_dir, folder, tmp_path / "bf16", amp="bf16", max_steps=2, epochs=1),
                       progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["history"][0]["train_loss"])


def test_siglip_fine_tunes_with_its_own_sigmoid_loss(tiny_siglip_dir, folder, tmp_path):
    """The sigmoid loss equals transformers' SiglipModel loss, and fine-tuning trains the logit bias too."""
    from transformers import SiglipModel

    from medvlkit.engine.losses import pair_loss

    m = create_model(f"hf:{tiny_siglip_dir}")
    ref = SiglipModel.from_pretrained(tiny_siglip_dir).eval()
    pixels, tokens = _inputs(m, n=4)
    with torch.no_grad():
        want = ref(pixel_values=pixels, input_ids=tokens["input_ids"], return_loss=True).loss
        got = pair_loss(m.encode_image(pixels), m.encode_text(tokens), m.log_scale_param(), m.log_bias_param(), None)
    assert m.log_bias_param() is not None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    bias0 = float(m.log_bias_param().detach())
    finetune(FinetuneConfig(model=f"hf:{tiny_siglip_dir}", data=str(folder), out_dir=str(tmp_path / "sig"),
                            lora="r=2,dropout=0", epochs=1, batch_size=4, device="cpu", workers=0, max_steps=2),
             progress=False)
    trained = load_checkpoint(tmp_path / "sig" / "checkpoint.pt")["trainable"]
    assert "model.logit_bias" in trained and float(trained["model.logit_bias"]) != bias0


def test_prompt_ce_class_embeddings_are_the_zero_shot_ensembles(tiny_clip_dir):
    """The class embeddings CLIP-LoRA's loss trains through are those zero-shot scores with (one formula, in the
    graph): each class the re-normalised mean of its prompts' unit embeddings."""
    import torch

    from medvlkit import create_model
    from medvlkit.data.prompts import load_prompt_set
    from medvlkit.engine.answer import ensemble_embeddings
    from medvlkit.tasks.finetune.steps import class_text_embeddings

    model, ps = create_model(f"hf:{tiny_clip_dir}"), load_prompt_set("pneumonia")
    texts = [(c, t) for c, cls in enumerate(ps.classes) for t in ps.texts(cls.positive)]
    with torch.no_grad():
        ours = class_text_embeddings(model, model.tokenize([t for _, t in texts]),
                                     torch.tensor([c for c, _ in texts]), len(ps.classes))
    np.testing.assert_allclose(ours.numpy(), ensemble_embeddings(model, ps), atol=1e-6)
    # the step's loss by hand: mean cross-entropy of the model's fixed temperature x cosine to each class
    from medvlkit.tasks.finetune.steps import prompt_ce_step

    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 1])
    loss = prompt_ce_step(model, pixels, target, model.tokenize([t for _, t in texts]),
                          torch.tensor([c for c, _ in texts]), len(ps.classes), 3.0)
    with torch.no_grad():
        img = model.encode_image(pixels).double().numpy()
    logits = model.logit_scale * img @ ensemble_embeddings(model, ps).astype(np.float64).T
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(3), target.numpy()].mean(), rel=1e-5)
