"""OpenAI CLIP's BPE vocabulary, shipped with medvlkit, so OpenAI-format checkpoints (CheXzero, PubMedCLIP, OpenAI's
RN50...) and open_clip folders need no tokenizer from elsewhere.

``weights/bpe_simple_vocab_16e6.txt.gz`` is OpenAI's file byte for byte (MIT, Copyright (c) 2021 OpenAI; the same
file open_clip ships; sha256 below). :func:`clip_tokenizer` turns it into the ``vocab.json`` + ``merges.txt`` that
transformers' ``CLIPTokenizer`` reads, as transformers' own conversion does (``SimpleTokenizer.__init__`` of
openai/CLIP): the 256 byte symbols, the same with ``</w>``, the first 48,894 merges, ``<|startoftext|>`` and
``<|endoftext|>`` (ids 49406, 49407). The two files are written once into medvlkit's cache folder.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from medvlkit.errors import MedvlkitError
from medvlkit.files import default_cache_dir

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_SIZE = 49408  # the text towers' embedding rows; end-of-text is the last id


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (OpenAI CLIP's ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def vocab_and_merges(raw: bytes) -> tuple[dict[str, int], list[str]]:
    """The token -> id table and the merge rules of OpenAI's gzipped BPE file."""
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def files() -> Path:
    """A folder with ``vocab.json`` and ``merges.txt`` made from the shipped vocabulary (written once, atomically).

    Raises:
        MedvlkitError: the shipped file is not OpenAI's (a damaged installation).
    """
    folder = default_cache_dir() / "tokenizers" / f"clip-bpe-{VOCAB_SHA256[:12]}"
    if not (folder / "merges.txt").is_file():  # made once, from the shipped file checked against OpenAI's
        raw = (resources.files("medvlkit.models") / "weights" / VOCAB_FILE).read_bytes()
        if hashlib.sha256(raw).hexdigest() != VOCAB_SHA256:
            raise MedvlkitError(f"medvlkit's {VOCAB_FILE} is damaged (sha256 differs from OpenAI's): reinstall "
                                "medvlkit")
        vocab, merges = vocab_and_merges(raw)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("vocab.json", json.dumps(vocab, ensure_ascii=False)),
                           ("merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")):
            tmp = folder / f"{name}.{os.getpid()}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, folder / name)
    return folder


def clip_tokenizer() -> Any:
    """transformers' ``CLIPTokenizer`` on the shipped OpenAI CLIP vocabulary."""
    from transformers import CLIPTokenizer

    folder = files()
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
