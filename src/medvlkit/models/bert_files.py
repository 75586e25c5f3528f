"""The BERT text towers of checkpoints that carry BERT's weights but not its files (GLoRIA, PMC-CLIP, FLAIR): where
the tokenizer folder is, the tokenizer, and the ``BertModel`` from the weights (its config from ``config.json`` there,
else from the tensors' shapes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medvlkit.errors import MedvlkitError, first_line


def bert_config_from_shapes(bert_sd: dict[str, torch.Tensor]):
    """A transformers ``BertConfig`` from a ``BertModel`` state dict's shapes (heads of width 64, as in every released
    BERT; the rest of BERT-base's settings). Only for towers known to be BERTs: a RoBERTa has the same tensor names."""
    from transformers import BertConfig

    hidden = bert_sd["embeddings.word_embeddings.weight"].shape[1]
    return BertConfig(vocab_size=bert_sd["embeddings.word_embeddings.weight"].shape[0], hidden_size=hidden,
                      num_hidden_layers=len({k.split(".")[2] for k in bert_sd if k.startswith("encoder.layer.")}),
                      num_attention_heads=max(1, hidden // 64),
                      intermediate_size=bert_sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=bert_sd["embeddings.position_embeddings.weight"].shape[0])


def text_folder(weights: Path, tokenizer: str | None) -> Path:
    """``--tokenizer DIR`` when given, else ``text/`` beside the weights file, else its own folder, whichever holds
    ``vocab.txt`` (``text/`` when neither does, for the error message)."""
    if tokenizer:
        return Path(tokenizer).expanduser()
    return next((d for d in (weights.parent / "text", weights.parent) if (d / "vocab.txt").is_file()),
                weights.parent / "text")


def bert_tokenizer(text_dir: Path, what: str) -> Any:
    """The BERT tokenizer in ``text_dir``: its ``tokenizer_config.json`` when there, else ``vocab.txt``.

    Raises:
        MedvlkitError: no tokenizer files there, naming ``what`` (e.g. "gloria:FILE: no Bio_ClinicalBERT tokenizer").
    """
    from transformers import AutoTokenizer, BertTokenizer

    try:
        return AutoTokenizer.from_pretrained(text_dir, local_files_only=True) \
            if (text_dir / "tokenizer_config.json").is_file() else BertTokenizer(str(text_dir / "vocab.txt"))
    except Exception as err:  # noqa: BLE001 - transformers raises many types for missing tokenizer files
        raise MedvlkitError(f"{what} (vocab.txt) in {text_dir}; pass --tokenizer DIR ({first_line(err)})") from None


def bert_from_weights(bert_sd: dict[str, torch.Tensor], text_dir: Path, with_pooler: bool | None = None):
    """transformers' ``BertModel`` holding ``bert_sd`` (BertModel's own key names): config from
    ``text_dir/config.json``, else from the shapes; BERT's pooler built when asked, or (``None``) when the weights
    have one. Raises what ``load_state_dict`` raises on a mismatch."""
    from transformers import BertConfig, BertModel

    bert_sd = dict(bert_sd)
    bert_sd.pop("embeddings.position_ids", None)  # written by transformers < 4.31
    cfg_file = text_dir / "config.json"
    config = BertConfig.from_json_file(str(cfg_file)) if cfg_file.is_file() else bert_config_from_shapes(bert_sd)
    pooler = any(k.startswith("pooler.") for k in bert_sd) if with_pooler is None else with_pooler
    bert = BertModel(config, add_pooling_layer=pooler)
    bert.load_state_dict(bert_sd)
    return bert
