"""Tiny random models and generated files for tests: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medvlkit.models.clip_bpe import bytes_to_unicode  # the table OpenAI's tokenizer uses


def write_clip_tokenizer(folder: Path, vocab_size: int = 514) -> Path:
    """A complete byte-level CLIP BPE tokenizer: 256 byte symbols, their </w> forms, unused filler tokens up to
    ``vocab_size``, start/end tokens, no merges. <|endoftext|> is the highest id, as in OpenAI's tokenizer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    filler = [f"<unused{i}>" for i in range(vocab_size - 514)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + filler
                                        + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def load_clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def tiny_clip_config(image_size: int = 32, context: int = 32):
    from transformers import CLIPConfig

    text = dict(vocab_size=514, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                max_position_embeddings=context, eos_token_id=513, bos_token_id=512, pad_token_id=513,
                hidden_act="quick_gelu", layer_norm_eps=1e-5)
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                  image_size=image_size, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def save_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random CLIPModel + tokenizer + image processor written with save_pretrained."""
    from transformers import CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(image_size)).eval()
    model.save_pretrained(folder)
    tok_dir = write_clip_tokenizer(folder / "_tok")
    load_clip_tokenizer(tok_dir).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(folder)
    return folder


def save_tiny_siglip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random SiglipModel + (byte-level) tokenizer + SigLIP image processor written with save_pretrained."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(seed)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=514, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=513, eos_token_id=513,
                         bos_token_id=512),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8))
    SiglipModel(cfg).eval().save_pretrained(folder)
    load_clip_tokenizer(write_clip_tokenizer(folder / "_tok")).save_pretrained(folder)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def make_image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 36), mode: str = "RGB") -> Path:
    """A random image file (format from the suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 4096, size[::-1], dtype=np.uint16)).save(path)
    else:
        shape = size[::-1] + ((3,) if mode == "RGB" else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def make_image_folder(root: Path, classes: dict[str, int], seed: int = 0, suffix: str = ".png") -> Path:
    """root/<class>/img<i><suffix> with random pictures."""
    k = seed
    for name, n in classes.items():
        for i in range(n):
            make_image(root / name / f"img{i}{suffix}", seed=k)
            k += 1
    return root


def make_split_folders(root: Path, sizes: dict[str, int], seed_step: int = 100) -> Path:
    """root/<split>/{NORMAL,PNEUMONIA}/ with ``sizes[split]`` random pictures per class; split i is seeded
    ``seed_step * i`` (deterministic: never Python's per-process ``hash``)."""
    for i, (split, n) in enumerate(sizes.items()):
        make_image_folder(root / split, {"NORMAL": n, "PNEUMONIA": n}, seed=seed_step * i)
    return root


def save_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A random BLIP captioner (BlipForConditionalGeneration + BlipProcessor with a small WordPiece vocab)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    words = ["chest", "x", "-", "ray", "lung", "opacity", "normal", "heart", "left", "right", "lower", "lobe",
             "effusion", "ct", "scan", "brain", "of", "the", "a", "with", "no", "image", "photo", "mri"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + words
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    torch.manual_seed(seed)
    cfg = BlipConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, bos_token_id=5, pad_token_id=0,
                                      sep_token_id=3, eos_token_id=3),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    BlipForConditionalGeneration(cfg).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_torchscript_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A TorchScript archive (as OpenAI's released CLIP files are) whose module tree holds ``state`` as buffers."""

    class Node(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, Node())
            node = getattr(node, name)
        node.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))
    return path


class PlantedPayload:
    """Unpickling this touches ``marker``: stands for any code a hostile file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def write_planted_torchscript(path: Path, marker: Path) -> Path:
    """A zip laid out like a TorchScript archive whose data.pkl runs code when unpickled."""
    import pickle
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"visual.proj": PlantedPayload(marker)}, protocol=2))
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/version", "3\n")
    return path


def write_dicom(path: Path, rows: int, cols: int, frames: int = 1, deflated: bool = False,
                pixels: np.ndarray | None = None, bits: int = 16, jpeg_frame: bytes | None = None) -> Path:
    """A MONOCHROME2 secondary-capture DICOM of ``bits`` (8 or 16) bits without a VOI window (zeros unless
    ``pixels``), optionally deflated, or (``jpeg_frame``) one encapsulated JPEG baseline frame."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    if jpeg_frame is not None:
        from pydicom.uid import JPEGBaseline8Bit

        meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if jpeg_frame is not None:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([jpeg_frame])
        ds["PixelData"].is_undefined_length = True
        ds.save_as(path, enforce_file_format=True)
        return path
    shape = (frames, rows, cols) if frames > 1 else (rows, cols)
    dtype = np.uint8 if bits == 8 else np.uint16
    ds.PixelData = (np.zeros(shape, dtype) if pixels is None else pixels.astype(dtype)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def reference_fixture(*parts: str) -> Path:
    """A folder of ../shared/fixtures/reference_models (or $MEDVLKIT_FIXTURES): upstream outputs to match. CI sets
    MEDVLKIT_REQUIRE_DATA=1 so a missing folder fails instead of skipping."""
    import os

    import pytest

    root = Path(os.environ.get("MEDVLKIT_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
    folder = root.joinpath("reference_models", *parts)
    if not folder.is_dir():
        if os.environ.get("MEDVLKIT_REQUIRE_DATA") == "1":
            pytest.fail(f"reference fixtures not found at {folder}")
        pytest.skip(f"reference fixtures not found at {folder}")
    return folder


def recipe_state_dict(recipe: dict) -> dict[str, torch.Tensor]:
    """A reference fixture's seeded tensors (reference_models/recipe_check.py's rule): float64 draws from a generator
    seeded with each entry's index, rounded to the entry's dtype."""
    out = {}
    for e in recipe["tensors"]:
        dtype = getattr(torch, e["dtype"])
        if e["dist"] == "zeros":
            out[e["key"]] = torch.zeros(e["shape"], dtype=dtype)
        elif e["dist"] == "const":
            out[e["key"]] = torch.full(e["shape"], float(e["value"]), dtype=torch.float64).to(dtype)
        else:
            g = torch.Generator().manual_seed(e["index"])
            draw = torch.randn if e["dist"] == "normal" else torch.rand
            out[e["key"]] = (e["offset"] + e["scale"] * draw(e["shape"], generator=g, dtype=torch.float64)).to(dtype)
    return out


def run_backbone_tasks(spec: str, tmp: Path, embed_dim: int, finetune_args: tuple[str, ...] = ()) -> Path:
    """zeroshot, embed, probe and a 2-step ``finetune --lora default`` through the CLI on 8 generated images, then a
    zero-shot run of the fine-tuned ``ft:`` folder; each must exit 0 and embed must give finite ``embed_dim``
    vectors. Returns the fine-tune output folder."""
    from medvlkit.apps.cli import main

    data = make_split_folders(tmp / "d", {"train": 4, "val": 2, "test": 2})
    common = ["--data", str(data), "-q", "--workers", "0"]
    base = ["--model", spec, *common, "--bootstrap", "0"]
    assert main(["zeroshot", *base, "--split", "test", "--prompts", "pneumonia", "--out", str(tmp / "z")]) == 0
    assert main(["embed", "--model", spec, *common, "--split", "test", "--out", str(tmp / "e")]) == 0
    emb = np.load(tmp / "e" / "embeddings.npy")
    assert emb.shape == (4, embed_dim) and np.isfinite(emb).all()
    assert main(["probe", *base, "--out", str(tmp / "p")]) == 0
    assert main(["finetune", *base, "--lora", "default", "--max-steps", "2", "--batch-size", "4", "--device", "cpu",
                 *finetune_args, "--out", str(tmp / "f")]) == 0
    assert main(["zeroshot", "--model", f"ft:{tmp / 'f' / 'best'}", *common, "--bootstrap", "0", "--split", "test",
                 "--prompts", "pneumonia", "--out", str(tmp / "z2")]) == 0
    return tmp / "f"


def free_port() -> int:
    """A free TCP port on localhost (for torchrun's rendezvous in the multi-process tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (a decompression bomb needs no pixel data to be refused)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _as_torchscript_zip(saved: Path, path: Path, deflate: tuple[str, ...] = ()) -> Path:
    """Re-pack a ``torch.save`` zip as a TorchScript-looking archive (adds ``constants.pkl``); records whose name ends
    with one of ``deflate`` are stored compressed (torch writes every record uncompressed)."""
    import pickle
    import zipfile

    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w") as dst:
        prefix = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            kind = zipfile.ZIP_DEFLATED if info.filename.endswith(deflate) else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info.filename), compress_type=kind)
        dst.writestr(f"{prefix}/constants.pkl", pickle.dumps((), protocol=2))
    return path


def hostile_archives(folder: Path) -> dict[str, Path]:
    """Small archives that make a naive tensor unpickler hang or allocate (issue 25, item 11), each also as a
    Lightning-style checkpoint (``<name>.ckpt``: the same pickle under ``state_dict``):

    - ``shared_dicts``: 40 levels of dicts each holding the level below twice (2^40 paths through 41 objects);
    - ``rereads``: one deflated 1 MB storage record referenced by 1,300 tensors (read again per reference: 1.3 GB);
    - ``stride0``: a 1-element storage viewed as 16,384 x 16,384 with strides 0 (1 GiB once materialised);
    - ``missized``: a storage record shorter than its declared size.
    """
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    nested: dict = {"w": torch.zeros(2)}
    for _ in range(40):
        nested = {"a": nested, "b": nested}
    big = torch.zeros(250_000)
    payloads = {"shared_dicts": nested, "rereads": {f"t{i}": big[i:i + 1] for i in range(1300)},
                "stride0": {"visual.proj": torch.zeros(1).expand(16384, 16384)}, "missized": {"w": torch.zeros(64)}}
    out = {}
    for name, payload in payloads.items():
        for suffix, obj in ((".pt", payload), (".ckpt", {"state_dict": payload, "epoch": 1})):
            raw = folder / f"{name}{suffix}.raw"
            torch.save(obj, raw)
            path = _as_torchscript_zip(raw, folder / f"{name}{suffix}", ("data/0",) if name == "rereads" else ())
            raw.unlink()
            if name == "missized":
                with zipfile.ZipFile(path) as z:
                    records = {i.filename: z.read(i.filename) for i in z.infolist()}
                key = next(k for k in records if k.endswith("data/0"))
                records[key] = records[key][:100]
                with zipfile.ZipFile(path, "w") as z:
                    for k, v in records.items():
                        z.writestr(k, v)
            out[name + suffix] = path
    return out


def proc_status_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's memory figure from /proc/<pid>/status in MB (``VmRSS`` now, ``VmHWM`` its peak); NaN when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_tasks(spec: str, tmp_path: Path, probe_features: str = "embedding") -> dict:
    """Zero-shot, embed, probe (``--features probe_features``) and LoRA fine-tuning (default targets, 2 steps) of
    model ``spec`` through the CLI on a tiny generated dataset, each asserted to exit 0; returns ``finetune.json``."""
    from medvlkit.apps.cli import main

    data = make_split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    base = ["--model", spec, "--data", str(data), "-q", "--workers", "0"]
    assert main(["zeroshot", *base, "--split", "test", "--prompts", "pneumonia", "--bootstrap", "0", "--out",
                 str(tmp_path / "z")]) == 0
    assert main(["embed", *base, "--split", "test", "--out", str(tmp_path / "e")]) == 0
    assert main(["probe", *base, "--features", probe_features, "--bootstrap", "0", "--out", str(tmp_path / "p")]) == 0
    assert main(["finetune", *base, "--lora", "default", "--max-steps", "2", "--batch-size", "4", "--device", "cpu",
                 "--bootstrap", "0", "--out", str(tmp_path / "f")]) == 0
    return json.loads((tmp_path / "f" / "best" / "finetune.json").read_text())


def assert_equals_upstream(model, folder: Path, tokens: dict | None = None) -> None:
    """``model``'s unnormalised image and text embeddings of ``folder/inputs.npz`` (pixels; ``tokens``, or its
    ``input_ids``) equal the upstream outputs in ``folder/expected.npz`` to 1e-5, and its temperature is
    exp(``logit_scale``) there."""
    import pytest

    inputs, expected = np.load(folder / "inputs.npz"), np.load(folder / "expected.npz")
    tokens = tokens if tokens is not None else {"input_ids": torch.from_numpy(inputs["input_ids"])}
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy()
        txt = model.encode_text(tokens, normalize=False).numpy()
    np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
    assert model.logit_scale == pytest.approx(float(np.exp(expected["logit_scale"])), rel=1e-6)


def assert_prompt_learning_path(model, texts=("a chest x-ray of the lungs", "no acute findings")) -> None:
    """CoOp's path through a backbone's text tower: its word embeddings fed back give ``encode_text`` exactly, other
    embeddings give other outputs, and the gradient reaches the embeddings."""
    tokens = model.tokenize(list(texts))
    with torch.no_grad():
        emb = model.text_input_embeddings(tokens)
        direct = model.encode_text(tokens)
        via = model.encode_text_from_embeddings(emb, tokens)
        noise = torch.randn(emb.shape, generator=torch.Generator().manual_seed(0)).to(emb.dtype)
        other = model.encode_text_from_embeddings(emb + noise, tokens)
    assert emb.ndim == 3 and emb.shape[0] == len(texts)
    torch.testing.assert_close(via, direct, atol=1e-6, rtol=1e-6)
    assert (other - direct).abs().max() > 1e-3  # the embeddings given are the ones used
    emb = emb.clone().requires_grad_(True)
    with torch.enable_grad():
        model.encode_text_from_embeddings(emb, tokens).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
