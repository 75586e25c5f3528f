"""Issue 25, item 8: open_clip's ``resize_mode: "longest"`` (letterbox) became a centre crop; modes and fill colours
medvlkit does not implement were approximated. Failed on the main of 2026-12-06."""

import numpy as np
import pytest
from PIL import Image

from medvlkit import MedvlkitError
from medvlkit.models.base import ImagePreprocessor
from medvlkit.models.open_clip import preprocess_from_config


def _open_clip_longest(image: Image.Image, side: int) -> np.ndarray:
    """open_clip 3.x ``image_transform(resize_mode="longest")`` transcribed: ResizeKeepRatio(longest=1) then
    CenterCropOrPad(fill=0) (torchvision's resize of a PIL image is PIL's resize)."""
    w, h = image.size
    ratio = max(h / side, w / side) * 1 + min(h / side, w / side) * 0
    new_h, new_w = (round(x / ratio) for x in (h, w))
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BICUBIC))
    pad_l, pad_t = (side - new_w) // 2, (side - new_h) // 2
    out = np.zeros((side, side, 3), np.uint8)
    out[pad_t:pad_t + new_h, pad_l:pad_l + new_w] = resized
    return out


@pytest.mark.parametrize("size", [(300, 200), (200, 301), (97, 250), (224, 224), (1000, 3)])
def test_item08_longest_is_open_clips_letterbox(size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    cfg = preprocess_from_config({"preprocess_cfg": {"resize_mode": "longest", "size": 224}}, 224)
    assert cfg.resize_mode == "longest"
    got = ImagePreprocessor(cfg).to_uint8(image).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(got, _open_clip_longest(image, 224))


@pytest.mark.parametrize("pre, match", [({"resize_mode": "letterbox"}, "not implemented"),
                                        ({"resize_mode": "longest", "fill_color": 128}, "fill_color"),
                                        ({"interpolation": "lanczos"}, "interpolation"),
                                        ({"size": [224, 336]}, "non-square")])
def test_item08_what_is_not_implemented_is_refused(pre, match):
    with pytest.raises(MedvlkitError, match=match):
        preprocess_from_config({"preprocess_cfg": pre}, 224)


def test_item08_shortest_and_squash_unchanged():
    assert preprocess_from_config({}, 224).resize_mode == "shortest"
    assert preprocess_from_config({"preprocess_cfg": {"resize_mode": "squash"}}, 224).resize_mode == "squash"
