"""Served apps for the serve tests: the real ``lite`` with an index of real chest X-rays, and a tiny random ``hf:``
CLIP with an index of generated images."""

from pathlib import Path

import pytest

from helpers import make_image


def cxr_files(data_root: Path, n: int = 4) -> list[Path]:
    """n real Kermany test X-rays, half of each class."""
    test = data_root / "chest_xray_pneumonia" / "test"
    return [p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((test / cls).glob("*.jpeg"))[: n // 2]]


def build_index(model, folder: Path, out: Path) -> Path:
    from medvlkit.data import load_dataset
    from medvlkit.engine.options import RunOptions
    from medvlkit.tasks.search import index_task

    index_task(model, load_dataset(folder), out, {}, run=RunOptions(workers=0, progress=False, cache=False))
    return out


@pytest.fixture(scope="module")
def lite_served(lite, data_root, tmp_path_factory):
    """(engine, folder of the indexed real X-rays) for lite."""
    from medvlkit.apps.serve.engine import ServeEngine
    from medvlkit.tasks.search import load_index

    folder = tmp_path_factory.mktemp("cxr")
    for p in cxr_files(data_root, 6):
        (folder / p.name).symlink_to(p)
    index = load_index(build_index(lite, folder, tmp_path_factory.mktemp("cxr-index")))
    return ServeEngine(lite, ["pneumonia", "chest_xray_findings"], index, cache=False), folder


@pytest.fixture(scope="module")
def tiny_served(tiny_clip_dir, tmp_path_factory):
    """(engine, folder of the indexed generated images) for a tiny random hf: CLIP."""
    from medvlkit import create_model
    from medvlkit.apps.serve.engine import ServeEngine
    from medvlkit.tasks.search import load_index

    model = create_model(f"hf:{tiny_clip_dir}")
    folder = tmp_path_factory.mktemp("imgs")
    for i in range(6):
        make_image(folder / f"img{i}.png", seed=i, size=(40 + 8 * i, 36))
    index = load_index(build_index(model, folder, tmp_path_factory.mktemp("tiny-index")))
    return ServeEngine(model, ["pneumonia", "chest_xray_findings"], index, cache=False), folder


@pytest.fixture(params=["lite", "tiny"])
def served(request):
    """Each endpoint test runs on both models."""
    return request.getfixturevalue(f"{request.param}_served")
