"""The one place that calls torch.onnx.export: TorchScript exporter, opset 17, eval mode.

Why not the default dynamo exporter: it emits opset 20, takes ~10x longer and its graphs defeat
ONNX Runtime's attention fusion (../shared/reference/measurements.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 17
EXPORTER = f"torch.onnx torchscript (torch {torch.__version__.split('+')[0]})"


def export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = OPSET,
) -> None:
    """Trace `module` in eval mode to `path`, then run the full ONNX checker on the result."""
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream; we choose it on purpose (see above).
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript", category=DeprecationWarning
        )
        # ... and its internals call helpers deprecated along with it (torch's own business).
        warnings.filterwarnings(
            "ignore",
            message="The feature will be removed",
            category=DeprecationWarning,
            module=r"torch\.onnx\.",
        )
        # Shapes flow through tensor ops in our models; the tracer's generic warnings about
        # Python values do not apply, and parity checks the graph at other shapes anyway.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    # The exporter restores each submodule's previous training flag; eval again so a caller
    # comparing against `module` never runs it with dropout on.
    module.eval()
    onnx.checker.check_model(str(path), full_check=True)
