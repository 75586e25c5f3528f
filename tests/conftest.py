import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import save_tiny_clip, save_tiny_siglip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """``MEDVLKIT_TEST_THREADS=N`` pins torch to N threads for the session (default: torch's own choice)."""
    threads = os.environ.get("MEDVLKIT_TEST_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def _engines_dir(tmp_path_factory) -> Path:
    """One folder of built ONNX Runtime engines for the whole session (lite's graph is built once, ~10 s)."""
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, _engines_dir):
    """Every test gets its own embedding cache and model folder; nothing touches ~/.cache."""
    monkeypatch.setenv("MEDVLKIT_ENGINES", str(_engines_dir))
    monkeypatch.setenv("MEDVLKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MEDVLKIT_MODELS", str(tmp_path_factory.mktemp("models")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def lite():
    """The real embedded model, loaded once for the session. Tests must not change it (fine-tuning tests load
    their own copy through the CLI)."""
    from medvlkit import create_model

    return create_model("lite")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("tiny_siglip"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data: $MEDVLKIT_DATA or ../shared/data. CI sets MEDVLKIT_REQUIRE_DATA=1 so a missing
    folder fails the run instead of skipping."""
    root = Path(os.environ.get("MEDVLKIT_DATA", REPO.parent / "shared" / "data"))
    if not (root / "chest_xray_pneumonia").is_dir():
        if os.environ.get("MEDVLKIT_REQUIRE_DATA") == "1":
            pytest.fail(f"real data not found at {root} (MEDVLKIT_REQUIRE_DATA=1)")
        pytest.skip(f"real data not found at {root}; set MEDVLKIT_DATA")
    return root


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A hub on 127.0.0.1 (``tests/hubserver.py``) that the real ``huggingface_hub`` client talks to through
    ``HF_ENDPOINT``, with an empty cache and no token, offline flag or medvlkit offline switch set."""
    from hubserver import LocalHub

    server = LocalHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "MEDVLKIT_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    yield server
    server.stop()
