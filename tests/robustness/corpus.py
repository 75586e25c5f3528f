"""A corpus of broken and unusual inputs, written into a folder, with the CLI runs that read each one.

Every case is ``Case(name, argv)``: ``argv`` is a medvlkit command line (without the model option for verbs that
take one, added by the test) reading the input. Image cases sit in folders with one good image beside them, so an
``--on-error skip`` run must embed the good image and list the bad one.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import PlantedPayload, make_image, write_clip_tokenizer, write_dicom


@dataclass
class Case:
    """One input and the command lines that read it."""

    name: str
    argv: list[list[str]]
    kind: str = "data"  # data (a dataset path), image (a folder with one bad image), model, prompts, option
    expect_items: int | None = None  # for image cases: readable + skipped must equal this
    files: list[Path] = field(default_factory=list)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR declares width x height, followed by no image data (a decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(data + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def _image_cases(root: Path) -> list[tuple[str, callable]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))

    def save(name, fn):
        return name, fn

    exif = Image.Exif()
    exif[0x0112] = 6
    cases = [
        save("truncated.png", lambda p: p.write_bytes(_png_bytes(rgb)[:60])),
        save("empty.png", lambda p: p.write_bytes(b"")),
        save("text.png", lambda p: p.write_text("not an image\n")),
        save("random.jpg", lambda p: p.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())),
        save("truncated.jpg", lambda p: p.write_bytes(_jpeg_bytes(rgb)[:200])),
        save("sixteen.png", lambda p: Image.fromarray(rng.integers(0, 4096, (20, 20)).astype(np.uint16)).save(p)),
        save("onebit.png", lambda p: rgb.convert("1").save(p)),
        save("cmyk.jpg", lambda p: rgb.convert("CMYK").save(p)),
        save("rgba.png", lambda p: rgb.convert("RGBA").save(p)),
        save("la.png", lambda p: rgb.convert("LA").save(p)),
        save("palette.png", lambda p: rgb.convert("P").save(p, transparency=0)),
        save("animated.gif", lambda p: rgb.save(p, save_all=True, append_images=[rgb.rotate(90)])),
        save("multiframe.tif", lambda p: rgb.save(p, save_all=True, append_images=[rgb])),
        save("float.tif", lambda p: Image.fromarray(rng.random((20, 20)).astype(np.float32)).save(p)),
        save("float_nan.tif", lambda p: Image.fromarray(np.full((20, 20), np.nan, np.float32)).save(p)),
        save("int32.tif", lambda p: Image.fromarray(rng.integers(-5, 5, (20, 20)).astype(np.int32)).save(p)),
        save("exif_rotated.jpg", lambda p: rgb.save(p, exif=exif.tobytes())),
        save("tiny.png", lambda p: Image.new("RGB", (1, 1)).save(p)),
        save("strip.png", lambda p: Image.new("L", (400_000, 1)).save(p)),
        save("column.png", lambda p: Image.new("L", (1, 300_000)).save(p)),
        save("bomb_header.png", lambda p: _png_header_only(p, 100_000, 100_000)),
        save("image.bmp", lambda p: rgb.save(p)),
        save("image.webp", lambda p: rgb.save(p)),
        save("with space.png", lambda p: rgb.save(p)),
        save("new\nline.png", lambda p: rgb.save(p)),
        save("black.png", lambda p: Image.new("L", (20, 20)).save(p)),
        save("dicom_no_pixels.dcm", _dicom_without_pixels),
        save("dicom_garbage.dcm", lambda p: p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x07garbage" * 20)),
        save("dicom_string_slope.dcm", _dicom_string_slope),
        save("dicom_width0.dcm", lambda p: _dicom_with(p, WindowCenter=100, WindowWidth=0)),
        save("dicom_jpegls.dcm", _dicom_jpegls_garbage),
        save("dicom_mono1.dcm", lambda p: _dicom_with(p, PhotometricInterpretation="MONOCHROME1")),
        save("dicom_rows0.dcm", lambda p: _dicom_with(p, Rows=0)),
        save("dicom_frames.dcm", lambda p: _dicom_with(p, NumberOfFrames=10_000_000)),
        save("png_as.dcm", lambda p: rgb.save(p, format="PNG")),
        save("dicom_deflated.dcm", lambda p: write_dicom(p, 40, 40, deflated=True)),
        save("dicom_multiframe.dcm", lambda p: write_dicom(p, 16, 16, frames=3)),
    ]
    return cases


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG")
    return buf.getvalue()


def _dicom_with(path: Path, **tags) -> None:
    import pydicom

    write_dicom(path, 16, 16, pixels=np.arange(256).reshape(16, 16))
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _dicom_string_slope(path: Path) -> None:
    """RescaleSlope / RescaleIntercept written as text that is not a number (VR LO instead of DS)."""
    import pydicom

    write_dicom(path, 16, 16, pixels=np.arange(256).reshape(16, 16))
    ds = pydicom.dcmread(path)
    ds.add_new(0x00281053, "LO", "abc")
    ds.add_new(0x00281052, "LO", "zero")
    ds.save_as(path)


def _dicom_without_pixels(path: Path) -> None:
    import pydicom

    write_dicom(path, 8, 8)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)


def _dicom_jpegls_garbage(path: Path) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    write_dicom(path, 8, 8)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 30])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)


def _npz(path: Path, **arrays) -> None:
    np.savez(path, **arrays)


def _npz_pickled(path: Path, marker: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.zeros((2, 8, 8), np.uint8))
        z.writestr("images.npy", buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, np.array([PlantedPayload(marker), 1], dtype=object), allow_pickle=True)
        z.writestr("labels.npy", buf.getvalue())


def _npz_huge_header(path: Path) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (78_000, 1000, 1000)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", buf.getvalue())


def data_cases(root: Path, marker: Path) -> list[Case]:
    """Dataset files and folders (npz, CSV, JSONL, folders) with the verbs that read them."""
    good = make_image(root / "good" / "ok.png")
    img8 = np.zeros((3, 8, 8), np.uint8)
    npz = {
        "npz_empty": dict(images=np.zeros((0, 8, 8), np.uint8), labels=np.zeros(0, int)),
        "npz_1d": dict(images=np.zeros((3, 8), np.uint8), labels=np.array([0, 1, 0])),
        "npz_4channel": dict(images=np.zeros((3, 8, 8, 4), np.uint8), labels=np.array([0, 1, 0])),
        "npz_5d": dict(images=np.zeros((3, 2, 8, 8, 3), np.uint8), labels=np.array([0, 1, 0])),
        "npz_short_names": dict(images=img8, labels=np.eye(3, dtype=int), label_names=np.array(["a", "b"])),
        "npz_row_mismatch": dict(images=img8, labels=np.array([0, 1])),
        "npz_negative_label": dict(images=img8, labels=np.array([0, -1, 1])),
        "npz_float_labels": dict(images=img8, labels=np.array([0.5, 1.0, 0.0])),
        "npz_nan_images": dict(images=np.full((3, 8, 8), np.nan, np.float32), labels=np.array([0, 1, 0])),
        "npz_bool_images": dict(images=np.ones((3, 8, 8), bool), labels=np.array([0, 1, 0])),
        "npz_int64_images": dict(images=np.arange(192, dtype=np.int64).reshape(3, 8, 8) * 10**12,
                                 labels=np.array([0, 1, 0])),
        "npz_labels_only": dict(labels=np.array([0, 1])),
        "npz_split_no_labels": dict(train_images=img8),
        "npz_string_labels": dict(images=img8, labels=np.array(["a", "b", "a"])),
        "npz_huge_label_index": dict(images=img8, labels=np.array([0, 1, 10**9])),
    }
    cases = []
    for name, arrays in npz.items():
        _npz(root / f"{name}.npz", **arrays)
        cases.append(Case(name, [["datasets", "--data", str(root / f"{name}.npz")],
                                 ["embed", "--data", str(root / f"{name}.npz"), "--on-error", "skip"]]))
    _npz_pickled(root / "npz_pickled.npz", marker)
    _npz_huge_header(root / "npz_huge_header.npz")
    (root / "npz_garbage.npz").write_bytes(b"not a zip at all")
    for name in ("npz_pickled", "npz_huge_header", "npz_garbage"):
        cases.append(Case(name, [["datasets", "--data", str(root / f"{name}.npz")],
                                 ["embed", "--data", str(root / f"{name}.npz")]]))
    rel = os.path.relpath(good, root)
    texts = {
        "csv_latin1.csv": ("path,effusion\n" + f"{rel},1\nd\xe9j\xe0.png,0\n").encode("latin-1"),
        "csv_binary.csv": bytes(range(256)) * 4,
        "csv_ragged.csv": f"path,effusion,edema\n{rel},1\n{rel},0,1,1,1\n".encode(),
        "csv_nonnumeric.csv": f"path,effusion\n{rel},yes\n{rel},no\n".encode(),
        "csv_no_path.csv": b"effusion,edema\n1,0\n0,1\n",
        "csv_missing_files.csv": b"path,effusion\nnope1.png,1\nnope2.png,0\n",
        "csv_header_only.csv": b"path,effusion\n",
        "csv_empty.csv": b"",
        "csv_bom.csv": ("\ufeffpath,effusion,edema\n" + f"{rel},1,0\n{rel},0,1\n").encode("utf-8"),
        "csv_duplicate_columns.csv": f"path,effusion,effusion\n{rel},1,0\n".encode(),
        "csv_quoted_newlines.csv": f'path,effusion,edema\n"{rel}",1,0\n"{rel}","0","1"\n'.encode(),
        "csv_dir_path.csv": f"path,effusion,edema\n{root},1,0\n{rel},0,1\n".encode(),
        "jsonl_array.jsonl": b'["a", "b"]\n',
        "jsonl_number.jsonl": b"42\n",
        "jsonl_no_image.jsonl": b'{"text": "a chest x-ray"}\n',
        "jsonl_invalid.jsonl": b'{"image": "a.png", "text": \n',
        "jsonl_empty.jsonl": b"",
        "jsonl_latin1.jsonl": '{"image": "ok.png", "text": "r\xe9sum\xe9"}\n'.encode("latin-1"),
        "jsonl_text_not_string.jsonl": f'{{"image": "{rel}", "text": 5}}\n'.encode(),
        "captions_empty_text.csv": f"path,caption\n{rel},\n".encode(),
    }
    for name, data in texts.items():
        (root / name).write_bytes(data)
        stem = name.rsplit(".", 1)[0]
        cases.append(Case(stem, [["datasets", "--data", str(root / name)],
                                 ["embed", "--data", str(root / name), "--on-error", "skip"]]))
    (root / "empty_folder").mkdir()
    (root / "only_text").mkdir()
    (root / "only_text" / "readme.txt").write_text("hello")
    (root / "loop").mkdir()
    make_image(root / "loop" / "a.png")
    (root / "loop" / "self").symlink_to(root / "loop", target_is_directory=True)
    (root / "broken_link").mkdir()
    make_image(root / "broken_link" / "a.png")
    (root / "broken_link" / "gone.png").symlink_to(root / "nowhere.png")
    (root / "dir_named_png").mkdir()
    make_image(root / "dir_named_png" / "a.png")
    (root / "dir_named_png" / "x.png").mkdir()
    for name in ("empty_folder", "only_text", "loop", "broken_link", "dir_named_png"):
        cases.append(Case(name, [["datasets", "--data", str(root / name)],
                                 ["embed", "--data", str(root / name), "--on-error", "skip"],
                                 ["index", "--data", str(root / name), "--recursive", "--on-error", "skip",
                                  "--out", str(root / f"index-{name}")]]))
    return cases


def image_cases(root: Path) -> list[Case]:
    """One folder per unusual image file, with a good image beside it."""
    cases = []
    for name, write in _image_cases(root):
        folder = root / f"img-{name.replace(chr(10), '_')}"
        make_image(folder / "good.png")
        write(folder / name)
        cases.append(Case(f"image:{name!r}", [["embed", "--data", str(folder), "--on-error", "skip"],
                                              ["embed", "--data", str(folder)],
                                              ["zeroshot", "--data", str(folder), "--classes", "a,b",
                                               "--on-error", "skip"]],
                          kind="image", expect_items=2))
    return cases


def model_cases(root: Path, marker: Path) -> list[Case]:
    """Model specs that point at broken or hostile files."""
    import torch

    write_clip_tokenizer(root / "models")
    torch.save({"visual.proj": torch.zeros(2, 2), "visual.conv1.weight": torch.zeros(4, 3, 2, 2)},
               root / "models" / "truncated.pt")
    with zipfile.ZipFile(root / "models" / "fake_ts.pt", "w") as z:
        z.writestr("archive/constants.pkl", b"garbage")
        z.writestr("archive/data.pkl", b"garbage")
    torch.save({"x": PlantedPayload(marker)}, root / "models" / "planted.pt")
    (root / "models" / "text.pt").write_text("hello")
    (root / "models" / "empty.pt").write_bytes(b"")
    cfg_only = root / "models" / "config_only"
    cfg_only.mkdir()
    (cfg_only / "config.json").write_text(json.dumps({"model_type": "clip"}))
    bad_cfg = root / "models" / "bad_config"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_text("{not json")
    pickled_bin = root / "models" / "pickled_bin"
    pickled_bin.mkdir()
    (pickled_bin / "config.json").write_text(json.dumps({"model_type": "clip"}))
    torch.save({"x": PlantedPayload(marker)}, pickled_bin / "pytorch_model.bin")
    garbage_st = root / "models" / "garbage_safetensors"
    garbage_st.mkdir()
    (garbage_st / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (garbage_st / "model.safetensors").write_bytes(b"\x00" * 100)
    lite_bad = root / "models" / "lite_bad"
    lite_bad.mkdir()
    (lite_bad / "lite_config.json").write_text("{oops")
    ft_bad = root / "models" / "ft_bad"
    ft_bad.mkdir()
    (ft_bad / "finetune.json").write_text("[1, 2]")
    ft_missing = root / "models" / "ft_missing"
    ft_missing.mkdir()
    (ft_missing / "finetune.json").write_text(json.dumps({"base": "hf:/nonexistent/model", "lora": None}))
    specs = {
        "openai_truncated": f"openai-ckpt:{root / 'models' / 'truncated.pt'}",
        "openai_fake_torchscript": f"openai-ckpt:{root / 'models' / 'fake_ts.pt'}",
        "openai_planted": f"openai-ckpt:{root / 'models' / 'planted.pt'}",
        "openai_text": f"openai-ckpt:{root / 'models' / 'text.pt'}",
        "openai_empty": f"openai-ckpt:{root / 'models' / 'empty.pt'}",
        "hf_config_only": f"hf:{cfg_only}",
        "hf_bad_config": f"hf:{bad_cfg}",
        "hf_pickled_bin": f"hf:{pickled_bin}",
        "hf_garbage_safetensors": f"hf:{garbage_st}",
        "hf_missing": f"hf:{root / 'models' / 'nothing-here'}",
        "hf_hub_offline": "hf:someone/some-clip-model",
        "lite_bad_json": f"lite:{lite_bad}",
        "lite_missing": f"lite:{root / 'models' / 'no-lite'}",
        "ft_bad_json": f"ft:{ft_bad}",
        "ft_missing_base": f"ft:{ft_missing}",
        "open_clip_missing_extra": "open_clip:ViT-B-32",
        "unknown_source": "nonsense:abc",
        "empty_spec": "",
        "preset_not_downloaded": "biomedclip",
    }
    data = str(make_image(root / "model-data" / "a.png").parent)
    return [Case(name, [["embed", "--model", spec, "--data", data]], kind="model") for name, spec in specs.items()]


def prompt_cases(root: Path) -> list[Case]:
    """Prompt files a user may write wrongly."""
    folder = root / "prompt-data"
    make_image(folder / "effusion" / "a.png")
    make_image(folder / "normal" / "b.png", seed=1)
    sets = {
        "positional_template": {"templates": ["a {0} x-ray"], "classes": {"effusion": ["effusion"],
                                                                          "normal": ["normal"]}},
        "named_template": {"templates": ["a {name} x-ray"], "classes": {"effusion": ["x"], "normal": ["y"]}},
        "unbalanced_brace": {"templates": ["a {} x-ray {"], "classes": {"effusion": ["x"], "normal": ["y"]}},
        "no_classes": {"classes": {}},
        "array_top": ["effusion", "normal"],
        "empty_prompts": {"classes": {"effusion": [], "normal": ["y"]}},
        "pos_neg_without_negatives": {"mode": "pos_neg", "classes": {"effusion": {"positive": ["x"]},
                                                                     "normal": {"positive": ["y"]}}},
        "bad_mode": {"mode": "ranking", "classes": {"effusion": ["x"], "normal": ["y"]}},
        "missing_class": {"classes": {"effusion": ["x"]}},
        "template_not_string": {"templates": [5], "classes": {"effusion": ["x"], "normal": ["y"]}},
        "class_spec_number": {"classes": {"effusion": 3, "normal": ["y"]}},
    }
    cases = []
    for name, body in sets.items():
        path = root / "prompts" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(body))
        cases.append(Case(f"prompts:{name}", [["zeroshot", "--data", str(folder), "--prompts", str(path)]],
                          kind="prompts"))
    (root / "prompts" / "invalid.json").write_text("{nope")
    cases.append(Case("prompts:invalid_json", [["zeroshot", "--data", str(folder), "--prompts",
                                                str(root / "prompts" / "invalid.json")]], kind="prompts"))
    return cases


def option_cases(root: Path) -> list[Case]:
    """Options out of range or not fitting the data."""
    folder = root / "opt-data"
    for split in ("train", "val", "test"):
        make_image(folder / split / "a" / "x.png", seed=1)
        make_image(folder / split / "b" / "y.png", seed=2)
    one_class = root / "one-class"
    make_image(one_class / "train" / "a" / "x.png")
    make_image(one_class / "train" / "a" / "y.png", seed=1)
    make_image(one_class / "test" / "a" / "z.png", seed=2)
    make_image(one_class / "test" / "b" / "w.png", seed=3)
    (root / "calib_bad.json").write_text("{broken")
    (root / "calib_fields.json").write_text(json.dumps({"classnames": ["a"], "wrong": 1}))
    (root / "notes.txt").write_text("not a probe")
    d = str(folder)
    argvs = {
        "batch_size_0": ["embed", "--data", d, "--split", "test", "--batch-size", "0"],
        "batch_size_negative": ["embed", "--data", d, "--split", "test", "--batch-size", "-3"],
        "workers_negative": ["embed", "--data", d, "--split", "test", "--workers", "-1"],
        "bad_device": ["embed", "--data", d, "--split", "test", "--device", "tpu"],
        "cuda_absent": ["embed", "--data", d, "--split", "test", "--device", "cuda"],
        "bad_precision": ["embed", "--data", d, "--split", "test", "--precision", "fp8"],
        "bad_on_error": ["embed", "--data", d, "--split", "test", "--on-error", "ignore"],
        "format_mismatch": ["embed", "--data", d, "--split", "test", "--format", "medmnist"],
        "unknown_format": ["embed", "--data", d, "--format", "parquet"],
        "missing_split": ["embed", "--data", d, "--split", "holdout2"],
        "missing_data": ["embed", "--data", str(root / "nothing")],
        "probe_one_class": ["probe", "--data", str(one_class), "--C", "1"],
        "bad_group_pattern": ["probe", "--data", d, "--val-split", "holdout", "--group-pattern", "(unclosed"],
        "negative_bootstrap": ["zeroshot", "--data", d, "--split", "test", "--classes", "a,b", "--bootstrap", "-5"],
        "zero_shots": ["probe", "--data", d, "--shots", "0"],
        "negative_c": ["probe", "--data", d, "--C", "-1"],
        "gate_probe_text": ["gate", "--data", d, "--split", "test", "--probe", str(root / "notes.txt")],
        "calibration_malformed": ["apply-calibration", "--predictions", str(root / "notes.txt"), "--calibration",
                                  str(root / "calib_bad.json")],
        "calibration_fields": ["apply-calibration", "--predictions", str(root / "notes.txt"), "--calibration",
                               str(root / "calib_fields.json")],
        "probe_load_text": ["probe", "--data", d, "--load", str(root / "notes.txt")],
        "evaluate_text": ["evaluate", "--predictions", str(root / "notes.txt")],
        "report_empty": ["report", str(root / "empty-report-dir")],
        "classes_and_prompts": ["zeroshot", "--data", d, "--split", "test"],
        "classes_empty": ["zeroshot", "--data", d, "--split", "test", "--classes", ",,"],
        "finetune_zero_epochs": ["finetune", "--data", d, "--epochs", "0", "--device", "cpu"],
        "finetune_bad_lora": ["finetune", "--data", d, "--lora", "r=abc", "--device", "cpu"],
        "finetune_val_fraction": ["finetune", "--data", d, "--val-split", "holdout", "--val-fraction", "1.5",
                                  "--device", "cpu"],
        "search_missing_index": ["search", "--index", str(root / "no-index"), "--text", "x"],
        "cache_dir_not_a_folder": ["embed", "--data", d, "--split", "test", "--cache-dir", str(root / "notes.txt")],
        "out_unwritable": ["embed", "--data", d, "--split", "test", "--out", str(root / "notes.txt" / "sub" / "x")],
        "save_every_0": ["finetune", "--data", d, "--save-every", "0", "--device", "cpu"],
        "caption_per_image_0": ["caption", "--data", d, "--split", "test", "--per-image", "0", "--out",
                                str(root / "caps.jsonl")],
    }
    (root / "empty-report-dir").mkdir(exist_ok=True)
    return [Case(name, [argv], kind="option") for name, argv in argvs.items()]
