"""OpenAI CLIP's BPE vocabulary ships with medvlkit: OpenAI-format checkpoints load without tokenizer files, and the
tokens equal open_clip's SimpleTokenizer (upstream, on the real vocabulary) on the reference fixture's texts."""

import hashlib
from importlib import resources

import numpy as np
import pytest
import torch

from helpers import reference_fixture, tiny_clip_config
from medvlkit import create_model
from medvlkit.errors import MedvlkitError
from medvlkit.models.clip_bpe import VOCAB_FILE, VOCAB_SHA256, VOCAB_SIZE, clip_tokenizer


def bpe_fixture():
    z = np.load(reference_fixture("open_clip", "vit_b32_tiny") / "inputs.npz")
    return [str(t) for t in z["texts"]], z["bpe_input_ids"]


def test_the_shipped_vocabulary_is_openais_file_and_tokenizes_as_upstream():
    raw = (resources.files("medvlkit.models") / "weights" / VOCAB_FILE).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == VOCAB_SHA256
    texts, expected = bpe_fixture()  # open_clip 3.3.0's SimpleTokenizer (OpenAI's) on the same file
    tok = clip_tokenizer()
    assert len(tok) == VOCAB_SIZE and (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    ids = tok(texts, padding="max_length", max_length=expected.shape[1], return_tensors="np")["input_ids"]
    real = expected != 0  # upstream pads with 0, transformers' CLIP tokenizer with end-of-text: the towers pool the
    assert np.array_equal(ids[real], expected[real])  # first end-of-text either way
    assert all((row[~m] == 49407).all() for row, m in zip(ids, real))


def test_an_openai_checkpoint_without_tokenizer_files_loads_with_the_shipped_one(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from medvlkit.models.openai_ckpt import hf_to_openai_state_dict

    config = tiny_clip_config().to_dict()
    config["text_config"].update(vocab_size=VOCAB_SIZE, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(0)
    (tmp_path / "clip").mkdir()
    torch.save(hf_to_openai_state_dict(CLIPModel(CLIPConfig(**config))), tmp_path / "clip" / "model.pt")
    model = create_model(f"openai-ckpt:{tmp_path / 'clip' / 'model.pt'}")  # nothing beside it but the weights
    texts, expected = bpe_fixture()
    ids = model.tokenize(texts)["input_ids"].numpy()
    n = min(ids.shape[1], expected.shape[1])
    real = expected[:, :n] != 0
    assert np.array_equal(ids[:, :n][real], expected[:, :n][real])

    torch.manual_seed(0)  # a vocabulary of another size: the shipped one would pool the wrong token, so refused
    torch.save(hf_to_openai_state_dict(CLIPModel(tiny_clip_config())), tmp_path / "other.pt")
    with pytest.raises(MedvlkitError, match="vocabulary of 514"):
        create_model(f"openai-ckpt:{tmp_path / 'other.pt'}")
