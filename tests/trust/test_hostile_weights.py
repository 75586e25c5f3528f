"""Issue 25, item 11: small weight archives that made the tensor-only readers hang or allocate gigabytes (TorchScript
archives for openai-ckpt:, Lightning checkpoints for gloria:). Each test failed on the main of 2026-12-06 (the
shared-dicts archive never finished; measured before/after with benchmarks/unpickler_hostile.py)."""

import threading
import zipfile

import pytest
import torch

from helpers import _as_torchscript_zip, hostile_archives
from medvlkit import MedvlkitError
from medvlkit.models.torchscript import read_checkpoint_state_dict, read_torchscript_tensors
from medvlkit.models.weight_files import read_weights


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return hostile_archives(tmp_path_factory.mktemp("hostile"))


def _within(seconds: float, fn, *args):
    """``fn(*args)`` on a thread: its exception (or result), failing the test if it runs past ``seconds``."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} ran past {seconds} s"
    return box


@pytest.mark.parametrize("name, message", [
    ("shared_dicts.pt", "two paths"), ("rereads.pt", "compressed"), ("rereads.ckpt", "compressed"),
    ("stride0.pt", "covers more than its storage"), ("stride0.ckpt", "covers more than its storage"),
    ("missized.pt", "holds 100 bytes"), ("missized.ckpt", "holds 100 bytes")])
def test_item11_hostile_archives_are_refused_quickly(archives, name, message):
    reader = read_checkpoint_state_dict if name.endswith(".ckpt") else read_torchscript_tensors
    box = _within(10, reader, archives[name])
    assert isinstance(box.get("error"), MedvlkitError) and message in str(box["error"]), box


def test_item11_read_weights_refuses_stride0_views_from_any_pickle(tmp_path):
    torch.save({"visual.proj": torch.zeros(1).expand(4096, 4096)}, tmp_path / "plain.pt")  # weights_only path
    with pytest.raises(MedvlkitError, match="covers more than its storage"):
        read_weights(tmp_path / "plain.pt", "a CLIP checkpoint")


def test_item11_a_storage_referenced_many_times_is_read_once(tmp_path):
    big = torch.arange(4096, dtype=torch.float32)
    torch.save({f"t{i}": big[i:i + 2] for i in range(300)}, tmp_path / "raw.pt")
    path = _as_torchscript_zip(tmp_path / "raw.pt", tmp_path / "shared.pt")  # records stored, as torch writes them
    reads = []
    real = zipfile.ZipFile.read
    zipfile.ZipFile.read = lambda self, name, *a: reads.append(name) or real(self, name, *a)
    try:
        tensors = read_torchscript_tensors(path)
    finally:
        zipfile.ZipFile.read = real
    assert len([r for r in reads if "/data/" in r]) == 1
    assert len({t.untyped_storage().data_ptr() for t in tensors.values()}) == 1
    assert tensors["t7"].tolist() == [7.0, 8.0]


def test_item11_records_may_not_add_up_beyond_the_file(tmp_path):
    """Two records whose declared sizes together exceed the archive: refused before reading them."""
    torch.save({"a": torch.zeros(1000), "b": torch.zeros(1000)}, tmp_path / "raw.pt")
    path = _as_torchscript_zip(tmp_path / "raw.pt", tmp_path / "two.pt")
    with zipfile.ZipFile(path) as z:
        records = {i.filename: z.read(i.filename) for i in z.infolist()}
    with zipfile.ZipFile(path, "w") as z:  # the same records, one of them truncated to its first bytes
        for name, data in records.items():
            z.writestr(name, data[:10] if name.endswith("data/1") else data)
    with pytest.raises(MedvlkitError, match="holds 10 bytes|more bytes than the file"):
        read_torchscript_tensors(path)
