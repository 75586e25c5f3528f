"""How pixels must be prepared for one set of weights: a typed config that travels with the weights (no torch here,
so presets can carry it without slowing the CLI down)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# PIL resampling filters by name, and tf_bilinear: TensorFlow's tf.image.resize(method="bilinear", antialias=False)
# (half-pixel centres, no low-pass filter when shrinking), the big_vision resize MedSigLIP was trained with
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "tf_bilinear")
RESIZE_MODES = ("shortest", "squash", "pad", "square", "longest", "canvas")
HIGH_BIT_RULES = ("robust", "full_range")  # medvlkit.data.intensity.HIGH_BIT_RULES (no data import here)


@dataclass(frozen=True)
class PreprocessCfg:
    """How pixels must be prepared for one set of weights.

    Attributes:
        image_size: side of the square input the model sees.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel std divided after subtracting the mean.
        interpolation: PIL resampling filter name (bicubic, bilinear, nearest, lanczos, box; box is area
            averaging, PIL's counterpart of OpenCV's INTER_AREA), or ``tf_bilinear``: TensorFlow's bilinear resize
            without antialiasing (``squash`` only; MedSigLIP), rounded to uint8.
        resize_mode: ``shortest`` resizes the short side to ``image_size`` then centre-crops (CLIP);
            ``squash`` resizes both sides to ``image_size`` without keeping the aspect ratio (SigLIP);
            ``pad`` resizes the long side and pads to a black square (letterbox; CheXzero), cutting nothing off;
            ``square`` pastes the image unscaled on a black square of side max(image_size, w, h), then resizes the
            square to ``image_size`` (MedCLIP's ``pad_img`` + resize); ``longest`` resizes the long side to
            ``image_size`` (the short side rounded, as open_clip's ``ResizeKeepRatio(longest=1)``) and pads it to a
            black square, centred with the odd pixel right/bottom (open_clip's ``CenterCropOrPad``); ``canvas``
            resizes the long side to ``image_size`` (the short side truncated) and pads the right and bottom with
            black to a square (FLAIR's ``ImageScaling``: the image at the top-left of its canvas).
        resize_size: for ``shortest``, the short side before the centre crop to ``image_size`` (0: ``image_size``;
            BioViL resizes to 512 and crops 480); for ``pad``, the square the image is letterboxed into before the
            centre crop to ``image_size`` (GLoRIA: 256, then 224).
        pad_size: for ``pad``, the side of the square the image is first letterboxed into (with Lanczos, as
            CheXzero's 320 px files are made) before the square is resized to ``image_size``; 0 pads directly at
            ``image_size``.
        grayscale: convert to one grey channel (ITU-R 601 luma) before anything else, as models trained on grey
            radiographs do (MedCLIP pastes every image on an 8-bit grey canvas); the model still gets 3 channels.
        high_bit: how 16-bit PNG/TIFF files and uint16 arrays become 8 bits as they are decoded: ``robust``
            (medvlkit's rule for every model: 8-bit copies as stored, other data stretched between its 0.5th and
            99.5th percentiles) or ``full_range`` (divided by 65535, as MedSigLIP's model card scales 16-bit input
            to [0, 1]). Left out of ``repr``: :meth:`identity` adds it where it is not ``robust``, so the caches of
            every other model keep their keys.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    pad_size: int = 0
    resize_size: int = 0
    grayscale: bool = False
    high_bit: str = field(default="robust", repr=False)

    def __post_init__(self) -> None:
        # configs read from JSON carry lists; keep tuples so equal configs compare and fingerprint equal
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0), got mean={self.mean} std={self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={self.interpolation!r}; valid options: {sorted(INTERPOLATIONS)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={self.resize_mode!r}; valid options: {', '.join(RESIZE_MODES)}")
        if self.interpolation == "tf_bilinear" and self.resize_mode != "squash":
            raise ValueError(f"interpolation='tf_bilinear' goes with resize_mode='squash', not {self.resize_mode!r}")
        if self.resize_size and self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} must be >= image_size {self.image_size}")
        if self.pad_size < 0:
            raise ValueError(f"pad_size must be >= 0, got {self.pad_size}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.high_bit not in HIGH_BIT_RULES:
            raise ValueError(f"high_bit={self.high_bit!r}; valid options: {', '.join(HIGH_BIT_RULES)}")

    def decode_size(self) -> int:
        """The largest side the resize steps work at (``image_size``, ``resize_size``, ``pad_size``): how small a
        reduced-scale JPEG decode may go before the resize."""
        return max(self.image_size, self.resize_size, self.pad_size)

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> str:
        """What tells this preprocessing apart in cache keys: ``repr`` (every field but ``high_bit``), plus
        ``high_bit`` where it is not medvlkit's default (so adding the field changed no existing key)."""
        return repr(self) + ("" if self.high_bit == "robust" else f"[high_bit={self.high_bit}]")


    def describe(self) -> str:
        """One line for people: size, resize, interpolation, mean/std."""
        resize = {"shortest": "short side + centre crop", "squash": "squash", "square": "pasted on a black square",
                  "longest": "long side + black padding (open_clip longest)",
                  "canvas": "long side + black padding right and bottom (FLAIR's canvas)",
                  "pad": f"letterbox{f' at {self.pad_size} px (Lanczos), then' if self.pad_size else ''}"
                  f"{f' at {self.resize_size} px + centre crop' if self.resize_size else ''}"}
        mean = "/".join(f"{v:.4g}" for v in dict.fromkeys(self.mean))
        std = "/".join(f"{v:.4g}" for v in dict.fromkeys(self.std))
        grey = "grey, " if self.grayscale else ""
        bits = ", 16-bit input divided by 65535" if self.high_bit == "full_range" else ""
        return (f"{self.image_size} px, {grey}{resize[self.resize_mode]}, {self.interpolation}, mean {mean}, "
                f"std {std}{bits}")


def preprocess_beside(folder, base: PreprocessCfg | None = None) -> PreprocessCfg | None:
    """``folder/preprocess.json`` (PreprocessCfg fields) as a config: its fields over ``base`` when given, over the
    PreprocessCfg defaults otherwise; None when there is no such file.

    Raises:
        MedvlkitError: the file is not a JSON object of valid PreprocessCfg fields (one line, naming the file).
    """
    import json
    from pathlib import Path

    from medvlkit.errors import MedvlkitError, first_line

    side = Path(folder) / "preprocess.json"
    if not side.is_file():
        return None
    try:
        fields = json.loads(side.read_text())
        if not isinstance(fields, dict):
            raise TypeError(f"expected a JSON object, got {type(fields).__name__}")
        return PreprocessCfg(**({**base.to_dict(), **fields} if base is not None else fields))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise MedvlkitError(f"{side}: not a valid preprocessing config ({first_line(err)})") from None

