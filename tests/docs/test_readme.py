"""The command blocks of the README and of every page of the documentation site (in mkdocs.yml's navigation order),
run in order as written, on a small copy of the real data (so neither can drift from what the CLI does). Paths the
pages name are laid out in a temporary folder: `../shared/data` holds a few real images of every source (symlinks,
nothing copied from the repository), placeholders such as `DIR` or `labels.csv` are small real files, and model paths
(`hf:/models/...`) point at tiny random models of the same format. The only lines not run are listed in SKIP with
the reason."""

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import reference_fixture, save_tiny_blip, save_tiny_clip, write_clip_tokenizer
from hubserver import LocalHub
from medvlkit.apps.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
DOCS = README.parent / "docs"
SKIP = {
    "bash scripts/setup.sh && .venv/bin/python -m pytest": "this is that run",
    "medvlkit finetune ... --resume": "a placeholder; resuming is tested in tests/unit/test_training_loop.py",
    "medvlkit eval -m lite@1 -d ../shared/data/chest_xray_pneumonia -d ../shared/data/medmnist/breastmnist.npz":
        "the README's full few-shot grid (450 fits, 702 s, on all six sets); the same command on smaller data "
        "runs in docs/how-to/probe.md and tests/integration/test_eval_sweep.py",
    "torchrun --nproc-per-node 4": "needs 4 CUDA devices; the gloo paths run in tests/integration/test_distributed.py "
                                   "(finetune) and test_distributed_embed.py (embed)",
}
pytestmark = pytest.mark.data


def doc_pages() -> list[Path]:
    """The README, then the site's pages in the order of mkdocs.yml's navigation."""
    import yaml

    def walk(items):
        for item in items:
            for value in (item.values() if isinstance(item, dict) else [item]):
                if isinstance(value, list):
                    yield from walk(value)
                else:
                    yield DOCS / value

    return [README, *walk(yaml.safe_load((README.parent / "mkdocs.yml").read_text())["nav"])]


def test_every_page_of_the_site_is_in_its_navigation():
    """A page left out of the navigation would be left out of this test too."""
    assert sorted(doc_pages()[1:]) == sorted(DOCS.rglob("*.md"))


def readme_commands() -> list[str]:
    """Every command line of the bash blocks of the README and the site, continuation lines joined, comments
    dropped."""
    out = []
    text = "\n".join(p.read_text() for p in doc_pages())
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.split(r"\s+#", line)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _link_files(src_dir: Path, dst_dir: Path, names: list[str]) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        (dst_dir / n).symlink_to(src_dir / n)


def _small_cxr(real: Path, dst: Path) -> None:
    """A few real Kermany images per split and class; train's are of patients of pretraining's validation part, so
    the validation that `probe` and `finetune` hold out of train is not set aside as lite's training data."""
    from medvlkit.tasks.pretrain.corpus import cxr_patient, in_val

    for split, per_class in (("train", 8), ("test", 5)):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted(p.name for p in (real / split / cls).glob("*.jpeg"))
            if split == "train":
                val = [f for f in files if in_val(cxr_patient(f))][:per_class]
                files = val + [f for f in files if f not in val][:per_class - len(val)]
            _link_files(real / split / cls, dst / split / cls, files[:per_class])


def _small_medpix(real: Path, dst: Path, n: int = 6) -> None:
    (dst / "images").mkdir(parents=True)
    for part in ("train", "dev", "test"):
        rows = [json.loads(x) for x in (real / f"descriptions_{part}.jsonl").read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["Type"] == "CT"][:n // 2] + [r for r in rows if r["Type"] == "MR"][:n // 2]
        (dst / f"descriptions_{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        shutil.copy(real / f"data_{part}.jsonl", dst / f"data_{part}.jsonl")
        for r in rows:
            (dst / "images" / f"{r['image']}.jpg").symlink_to(real / "images" / f"{r['image']}.jpg")


def _small_npz(src: Path, dst: Path, n: int = 16) -> None:
    with np.load(src) as z:
        np.savez(dst, **{k: z[k][:n] for k in z.files})


def _chexpert_csv(path: Path, images: list[Path], split: bool) -> Path:
    rng = np.random.default_rng(0)
    lines = ["Path" + (",split" if split else "") + ",No Finding,Pleural Effusion,Edema"]
    for i, img in enumerate(images):
        labels = ["1", "0", "0"] if i % 3 == 0 else ["0", "1", rng.choice(["0", "1", "-1"])] if i % 3 == 1 else \
            ["0", "0", "1"]
        part = [("train", "val", "test")[i % 3]] if split else []
        lines.append(",".join([str(img), *part, *labels]))
    path.write_text("\n".join(lines) + "\n")
    return path


def build_world(data_root: Path, tmp: Path) -> tuple[Path, dict[str, str]]:
    """The folder the README's commands run in, and the replacements for the README's placeholder paths."""
    work, data = tmp / "work", tmp / "shared" / "data"
    _small_cxr(data_root / "chest_xray_pneumonia", data / "chest_xray_pneumonia")
    _small_medpix(data_root / "medpix2", data / "medpix2")
    (data / "medmnist").mkdir(parents=True)
    for name in ("breastmnist", "pneumoniamnist", "retinamnist"):
        _small_npz(data_root / "medmnist" / f"{name}.npz", data / "medmnist" / f"{name}.npz")
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            src = data_root / "natural" / "hymenoptera" / split / cls
            _link_files(src, data / "natural" / "hymenoptera" / split / cls, sorted(p.name for p in src.iterdir())[:3])
    with np.load(data_root / "natural" / "cifar10_test_first846.npz") as z:
        np.savez(data / "natural" / "cifar10_test_first846.npz", images=z["images"][:620], labels=z["labels"][:620],
                 label_names=z["label_names"])
    work.mkdir()
    cxr = sorted((data / "chest_xray_pneumonia" / "train").rglob("*.jpeg"))
    real = data_root / "chest_xray_pneumonia"
    # DIR: labelled, split. 16 a class in train (the README's --shots 16 needs them); val and test from the Kermany
    # test split, which lite never trained on (medvlkit sets its training images aside from validation and test)
    for split, (src, start, n) in {"train": ("train", 100, 16), "val": ("test", 100, 3),
                                   "test": ("test", 103, 3)}.items():
        for cls in ("NORMAL", "PNEUMONIA"):
            names = sorted(p.name for p in (real / src / cls).iterdir())[start:start + n]
            _link_files(real / src / cls, work / "DIR" / split / cls, names)
    for name in ("my_xrays", "my_images", "inbox", "val/medical"):
        _link_files(cxr[0].parent, work / name, [p.name for p in cxr[:3] if p.parent == cxr[0].parent])
    for name in ("inbox", "val/photos"):
        ants = data / "natural" / "hymenoptera" / "val" / "ants"
        _link_files(ants, work / name, sorted(p.name for p in ants.iterdir())[:2])
    shutil.copy(cxr[0], work / "some_xray.png")
    _chexpert_csv(work / "train.csv", cxr, split=False)
    # other data: images train.csv never saw (scoring a model on its own training images is refused)
    _chexpert_csv(work / "other.csv", sorted((data / "chest_xray_pneumonia" / "test").rglob("*.jpeg")), split=True)
    (work / "CheXpert-v1.0-small").mkdir()
    _chexpert_csv(work / "CheXpert-v1.0-small" / "valid.csv", cxr, split=False)
    with np.load(data / "medmnist" / "breastmnist.npz") as z:  # a user's own npz names its classes
        names = np.array(["malignant", "normal, benign"])
        np.savez(work / "other.npz", **{k: z[k] for k in z.files}, label_names=names)
    models = tmp / "models"
    save_tiny_clip(models / "pubmed-clip-vit-base-patch32")
    save_tiny_blip(models / "blip-image-captioning-base")
    _tiny_openai_ckpt(models / "chexzero" / "best_64_5e-05_original_22000_0.864.pt")
    return work, {"../shared/data": str(data), "/models/": f"{models}/", ".venv/bin/python": sys.executable,
                  " benchmarks/": f" {README.parent}/benchmarks/"}


def _tiny_openai_ckpt(path: Path) -> None:
    import torch
    from transformers import CLIPModel

    from helpers import tiny_clip_config
    from medvlkit.models.openai_ckpt import hf_to_openai_state_dict

    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(hf_to_openai_state_dict(CLIPModel(tiny_clip_config())), path)
    write_clip_tokenizer(path.parent)


def _labels_csv(work: Path) -> None:
    """labels.csv for `evaluate --labels`: the truth of runs/cxr's files, as a user would have it."""
    from medvlkit.engine.results import read_predictions

    pred = read_predictions(work / "runs" / "cxr" / "predictions.csv")
    rows = ["file,label"] + [f"{f},{pred.classnames[int(np.argmax(y))]}" for f, y in zip(pred.files, pred.labels)]
    (work / "labels.csv").write_text("\n".join(rows) + "\n")


def _start_server(argv: list[str], env: dict) -> subprocess.Popen:
    """`medvlkit serve ... &`: started in the background, as the README's shell would; the README's next line (curl
    --retry) waits for it, as a user's would."""
    proc = subprocess.Popen([sys.executable, "-m", "medvlkit", *argv[1:]], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert proc.poll() is None, f"medvlkit serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}"
    return proc


def test_readme_commands_run_as_written(data_root, tmp_path, monkeypatch, capsys):
    from helpers import free_port

    work, replace = build_world(data_root, tmp_path)
    port = free_port()
    replace |= {"127.0.0.1:8000": f"127.0.0.1:{port}", "--port 8000": f"--port {port}"}
    monkeypatch.chdir(work)
    monkeypatch.setenv("MEDVLKIT_DATA", replace["../shared/data"])
    # the README's downloads come from a hub on 127.0.0.1: BiomedCLIP-shaped tiny weights under the preset's id
    hub = LocalHub().start()
    folder = reference_fixture("open_clip", "biomedclip_tiny")
    hub.add("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    pacs = _start_pacs(data_root, tmp_path, work, replace, monkeypatch)
    servers: list[subprocess.Popen] = []
    try:
        ran = _run_readme(work, replace, servers, capsys)
    finally:
        pacs.stop()
        hub.stop()
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"README doc test: {ran} commands run")
    assert ran >= 42
    runs = work / "runs"
    assert json.loads((runs / "re-eval" / "result.json").read_text())["metrics"] == \
        json.loads((runs / "cxr" / "result.json").read_text())["metrics"]  # "its own truth: same numbers"
    assert json.loads((runs / "index-all" / "result.json").read_text())["metrics"]["n_images"] > 50
    with open(runs / "index-cxr" / "files.csv", newline="") as f:  # the served index: labels and names kept
        rows = list(csv.DictReader(f))
    assert rows and all(r["label"] in ("NORMAL", "PNEUMONIA") and r["name"].startswith(r["label"] + "/") for r in rows)
    assert (runs / "report" / "report.html").is_file() and (runs / "pretrain-lite" / "best").is_dir()


def _start_pacs(data_root: Path, tmp: Path, work: Path, replace: dict[str, str], monkeypatch):
    """The PACS the pages' DICOMweb commands talk to: a real Orthanc (tests/orthanc.py) holding six Kermany test films
    as DICOM, in place of http://127.0.0.1:8042; ``pacs-labels.csv`` keyed by their SOP Instance UIDs; the
    credentials in the environment, as a user would set them."""
    import pydicom

    from orthanc import PASSWORD, USER, kermany_dicom, require_orthanc, start_orthanc

    require_orthanc()
    server = start_orthanc(tmp / "orthanc")
    files = kermany_dicom(data_root, tmp / "orthanc-dicom", 3)
    server.upload([f for f, _ in files])
    (work / "pacs-labels.csv").write_text("SOPInstanceUID,label\n" + "".join(f"{f.stem},{label}\n"
                                                                          for f, label in files))
    from helpers import free_port

    port = free_port()  # its own server (serving.md's is still running on the other port)
    replace |= {"http://127.0.0.1:8042": server.url, "127.0.0.1:8001": f"127.0.0.1:{port}",
                "--port 8001": f"--port {port}",
                "$STUDY_UID": str(pydicom.dcmread(files[0][0], stop_before_pixels=True).StudyInstanceUID)}
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_PASSWORD", PASSWORD)
    return server


def _run_readme(work: Path, replace: dict[str, str], servers: list, capsys) -> int:
    """Run the README's command lines in order; returns how many ran."""
    ran = 0
    for line in readme_commands():
        if any(line.startswith(s) for s in SKIP):
            continue
        for old, new in replace.items():
            line = line.replace(old, new)
        line = line.replace("bash scripts/setup.sh && .venv/bin/medvlkit", "medvlkit")
        if line.startswith("medvlkit evaluate") and "--labels labels.csv" in line:
            _labels_csv(work)
        argv, start = shlex.split(line), time.perf_counter()
        env = dict(os.environ)
        while "=" in argv[0] and not argv[0].startswith("-"):  # VAR=value before the command
            key, _, value = argv.pop(0).partition("=")
            env[key] = value
        if argv[:2] == ["medvlkit", "serve"] and argv[-1] != "&":
            raise AssertionError(f"a README `medvlkit serve` line must end with & (the doc test runs it so): {line}")
        if argv[0] == "medvlkit" and argv[-1] != "&":
            rc = main(argv[1:])
        elif argv[-1] == "&":  # a server in the background
            assert argv[:2] == ["medvlkit", "serve"], f"only `medvlkit serve` runs in the background: {line}"
            servers.append(_start_server(argv[:-1], env))
            rc = 0
        else:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            rc = proc.returncode
            print(proc.stderr[-2000:], file=sys.stderr)
            if argv[0] == "curl":  # an API answer: JSON, not an error
                assert "error" not in json.loads(proc.stdout), f"{line}: {proc.stdout[:2000]}"
        err = capsys.readouterr().err
        print(f"{time.perf_counter() - start:6.1f} s  {line[:110]}", file=sys.__stdout__)
        assert rc == 0, f"README command failed (exit {rc}): {line}\n{err[-2000:]}"
        ran += 1
    return ran


def test_readme_names_every_shipped_prompt_set():
    from medvlkit.data.prompts import list_prompt_sets

    text = (DOCS / "data.md").read_text()
    line = text[text.index("Prompt sets shipped:"):text.index("Your own:", text.index("Prompt sets shipped:"))]
    assert set(re.findall(r"`([a-z_]+)`", line)) == set(list_prompt_sets())
