"""GLoRIA from its released Lightning-checkpoint layout. There is no upstream reference fixture (the gloria package
needs torchvision and the hub): the loader is checked against a transcription, in this file, of the published
``gloria/models/text_model.py`` (``BertEncoder.forward`` with ``aggregate_tokens``) and ``vision_model.py``
(``ImageEncoder.resnet_forward`` + ``generate_embeddings``), on tiny random checkpoints written like the released
ones (``state_dict`` keys ``gloria.img_encoder.*`` / ``gloria.text_encoder.*`` + pickled hyper-parameters)."""

import argparse
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from helpers import PlantedPayload, reference_fixture, run_backbone_tasks
from medvlkit import create_model
from medvlkit.errors import MedvlkitError
from medvlkit.models.gloria import GLORIA_PREPROCESS, clean_text
from medvlkit.models.torchvision_resnet import TorchvisionResNet

HIDDEN = 32


def write_gloria(folder, depth: int, marker=None):
    """A GLoRIA-shaped Lightning checkpoint (ResNet-``depth`` + tiny 4-layer BERT) and its tokenizer folder."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "text"
    shutil.copytree(reference_fixture("medclip", "tiny_bio_clinicalbert"), text)
    config = BertConfig.from_json_file(str(text / "config.json"))
    config.num_hidden_layers, config.hidden_dropout_prob, config.attention_probs_dropout_prob = 4, 0.0, 0.0
    config.to_json_file(str(text / "config.json"))
    torch.manual_seed(depth)
    bert = BertModel(config)  # AutoModel: with pooler, as the released text encoder
    resnet = TorchvisionResNet(depth)
    resnet.fc = nn.Identity()
    for m in resnet.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    feat, interm = (2048, 1024) if depth >= 50 else (512, 256)
    glob, local = nn.Linear(feat, HIDDEN), nn.Conv2d(interm, HIDDEN, 1, bias=False)
    sd = OrderedDict()
    sd.update({f"gloria.img_encoder.model.{k}": v for k, v in resnet.state_dict().items()})
    sd.update({f"gloria.img_encoder.global_embedder.{k}": v for k, v in glob.state_dict().items()})
    sd.update({f"gloria.img_encoder.local_embedder.{k}": v for k, v in local.state_dict().items()})
    sd.update({f"gloria.text_encoder.model.{k}": v for k, v in bert.state_dict().items()})
    sd["gloria.text_encoder.model.embeddings.position_ids"] = torch.arange(128)[None]  # transformers < 4.31
    hparams = argparse.Namespace(model="gloria", lr=5e-5)  # weights_only refuses such objects
    ckpt = {"epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.1.4", "state_dict": sd,
            "hyper_parameters": {"cfg": hparams, "payload": PlantedPayload(marker) if marker else None},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-5}]}]}
    torch.save(ckpt, folder / f"chexpert_resnet{depth}.ckpt")
    return folder / f"chexpert_resnet{depth}.ckpt"


def upstream_text(model, ids, mask, token_type, last_n_layers=4):
    """gloria BertEncoder.forward (agg_tokens=True, aggregate_method="sum", norm=False, emb_global=None)."""
    idxtoword = {v: k for k, v in model.tokenizer.get_vocab().items()}
    outputs = model.bert(ids, mask, token_type, output_hidden_states=True)
    embeddings = torch.stack(outputs.hidden_states[-last_n_layers:]).permute(1, 0, 2, 3)
    batch_size, num_layers, num_words, dim = embeddings.shape
    agg_embs_batch = []
    for embs, caption_id in zip(embeddings.permute(0, 2, 1, 3), ids):
        agg_embs, token_bank, word_bank = [], [], []
        for word_emb, word_id in zip(embs, caption_id):
            word = idxtoword[word_id.item()]
            if word == "[SEP]":
                agg_embs.append(torch.stack(token_bank).sum(axis=0))
                agg_embs.append(word_emb)
                break
            if not word.startswith("##"):
                if len(word_bank) == 0:
                    token_bank.append(word_emb)
                    word_bank.append(word)
                else:
                    agg_embs.append(torch.stack(token_bank).sum(axis=0))
                    token_bank, word_bank = [word_emb], [word]
            else:
                token_bank.append(word_emb)
                word_bank.append(word[2:])
        agg_embs = torch.stack(agg_embs)
        paddings = torch.zeros(num_words - len(agg_embs), num_layers, dim)
        agg_embs_batch.append(torch.cat([agg_embs, paddings]))
    embeddings = torch.stack(agg_embs_batch).permute(0, 2, 1, 3)
    return embeddings.mean(axis=2).sum(axis=1)


def upstream_image(model, x):
    """gloria ImageEncoder.resnet_forward + generate_embeddings (global part)."""
    x = nn.Upsample(size=(299, 299), mode="bilinear", align_corners=True)(x)
    r = model.resnet
    x = r.maxpool(F.relu(r.bn1(r.conv1(x))))
    x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
    x = nn.AdaptiveAvgPool2d((1, 1))(x).view(x.size(0), -1)
    return model.image_proj(x)


@pytest.mark.parametrize("depth", [18, 50])
def test_gloria_matches_the_published_architecture(depth, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = write_gloria(tmp_path / "g", depth, marker)
    m = create_model(f"gloria:{ckpt}")
    assert not marker.exists()  # the planted object in the hyper-parameters never ran
    assert m.embed_dim == HIDDEN and m.logit_scale == pytest.approx(10.0) and m.context_length == 97
    texts = ["Small left pleural effusion.", "No acute cardiopulmonary abnormality", "chest x-ray showing pneumonia"]
    tokens = m.tokenize(texts)
    assert tokens["input_ids"].shape == (3, 97)  # padding="max_length", word_num 97
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_t = m.encode_text(tokens, normalize=False)
        ref_t = upstream_text(m, tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"])
        ours_i = m.encode_image(pixels, normalize=False)
        ref_i = upstream_image(m, pixels)
    torch.testing.assert_close(ours_t, ref_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_i, ref_i, atol=1e-5, rtol=1e-5)


def test_gloria_text_cleaning_is_process_texts():
    # re.split on "1." / "2.", then on ".": ["", " Small  effusion", "", " No pneumothorax!"] -> words joined
    assert clean_text("1. Small  effusion.2. No pneumothorax!") == " small effusion  no pneumothorax"
    assert clean_text("Heart size normal\nlungs clear") == "heart size normal lungs clear"
    assert clean_text("caf\u00e9 opacity") == "caf opacity"  # non-ASCII characters dropped


def test_gloria_preprocessing_letterboxes_then_crops():
    """_resize_img: long side to 256 (INTER_AREA), zero padding split floor/ceil, then CenterCrop(224)."""
    from medvlkit.models.base import ImagePreprocessor

    # gloria_pretrain_v1.yaml: data.image.imsize 256, transforms.random_crop.crop_size 224; builder
    # build_transformation: Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)); process_img reads with cv2.imread(p, 0)
    assert (GLORIA_PREPROCESS.resize_size, GLORIA_PREPROCESS.image_size) == (256, 224)
    assert GLORIA_PREPROCESS.mean == (0.5,) * 3 and GLORIA_PREPROCESS.std == (0.5,) * 3 and GLORIA_PREPROCESS.grayscale
    im = Image.new("L", (512, 256), 255)  # landscape: 256 x 128 after the resize, 64 rows of zeros above and below
    x = ImagePreprocessor(GLORIA_PREPROCESS)(im).numpy()
    assert x.shape == (3, 224, 224)
    rows = x[0, :, 112]  # the crop starts 16 px in: 64 - 16 = 48 rows of padding, 128 image rows, 48 of padding
    np.testing.assert_allclose(rows[:48], -1.0)  # (0 - 0.5) / 0.5
    np.testing.assert_allclose(rows[48:176], 1.0)
    np.testing.assert_allclose(rows[176:], -1.0)


def test_gloria_refuses_other_files(tmp_path):
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(MedvlkitError, match="not a GLoRIA checkpoint"):
        create_model(f"gloria:{tmp_path / 'other.ckpt'}")
    ckpt = write_gloria(tmp_path / "g", 18)
    data = ckpt.read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedvlkitError, match="trunc.ckpt"):
        create_model(f"gloria:{tmp_path / 'trunc.ckpt'}")
    (tmp_path / "no_vocab").mkdir()
    shutil.copy(ckpt.parent / "text" / "config.json", tmp_path / "no_vocab")
    with pytest.raises(MedvlkitError, match="no Bio_ClinicalBERT tokenizer"):
        create_model(f"gloria:{ckpt}", tokenizer=str(tmp_path / "no_vocab"))
    with pytest.raises(MedvlkitError, match="Missing key"):  # a 12-layer config for a 4-layer checkpoint
        create_model(f"gloria:{ckpt}", tokenizer=str(tmp_path))


def test_gloria_runs_the_tasks(tmp_path):
    run_backbone_tasks(f"gloria:{write_gloria(tmp_path / 'g', 18)}", tmp_path, embed_dim=HIDDEN)


def test_prompt_learning_reaches_the_bert_tower(tmp_path):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"gloria:{write_gloria(tmp_path / 'g', 18)}"))
