"""One PyTorch module to one ONNX graph: the exporter both ``medvlkit export`` (whole towers,
:mod:`medvlkit.tasks.export`) and lite's ONNX Runtime engine (:mod:`medvlkit.models.fast_tower`) use."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from medvlkit.errors import MedvlkitError, first_line

MAX_DIM = {"batch": 4096, "tokens": 4096}
"""The largest size a dynamic axis of an exported graph accepts, by axis label."""


def onnx_modules():
    """``(onnx, onnxruntime)``, or a one-line error naming the extra that installs them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise MedvlkitError(f"ONNX needs onnx and onnxruntime: pip install 'medvlkit[onnx]' ({err})") from None
    return onnx, onnxruntime


class quiet:
    """Silence a logger (the exporters narrate every pass)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.level = logger, logger.level

    def __enter__(self) -> None:
        self.logger.setLevel(100)

    def __exit__(self, *exc) -> None:
        self.logger.setLevel(self.level)


def export_graph(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], dynamic: dict,
                 opset: int, output_name: str = "embeddings") -> str:
    """Export ``module(*args)`` to ``path``; returns the exporter that succeeded.

    Args:
        module: in eval mode (an exporter restores the mode it found, recursively).
        args: example inputs; their axes named in ``dynamic`` stay free (``{input: {axis: label}}``, labels from
            :data:`MAX_DIM`), the others are fixed at the example's size.
        path: the ``.onnx`` file (large weights go beside it in ``<name>.data``).
        input_names: one per argument.
        opset: the ONNX opset (at least 18 for the dynamo exporter).
        output_name: the graph's output.

    ``torch.export`` (dynamo) first: the TorchScript tracer mis-exported EfficientNet-Lite0 (max abs difference 6.0
    on its features, 0.21 on unit embeddings, where dynamo's graph is within 2.3e-5 and 1e-6); callers verify the
    graph either way.

    Raises:
        MedvlkitError: both exporters failed (each one's reason in the message).
    """
    shapes = {name: {axis: torch.export.Dim(f"{name}_{label}", max=MAX_DIM[label])
                     for axis, label in axes.items()} for name, axes in dynamic.items()}
    errors = []
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings(), quiet(logging.getLogger("torch.onnx")), \
                    quiet(logging.getLogger("onnx_ir")), quiet(logging.getLogger("onnxscript")):
                warnings.simplefilter("ignore")
                if dynamo:
                    torch.onnx.export(module, args, str(path), input_names=input_names, output_names=[output_name],
                                      dynamic_shapes=tuple(shapes.get(n, {}) for n in input_names),
                                      opset_version=max(opset, 18), dynamo=True, verbose=False)
                else:
                    torch.onnx.export(module, args, str(path), input_names=input_names, output_names=[output_name],
                                      dynamic_axes=dynamic | {output_name: {0: "batch"}}, opset_version=opset,
                                      dynamo=False, do_constant_folding=True)
            return "dynamo" if dynamo else "torchscript"
        except Exception as err:  # noqa: BLE001 - the exporters raise many types for unsupported operators
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {first_line(err)}")
    raise MedvlkitError(f"ONNX export of the {path.stem} tower failed ({'; '.join(errors)})")
