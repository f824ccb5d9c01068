"""Export a loaded model to ONNX: a dynamic batch axis, dynamic or fixed height and width, checked by onnx.checker.

Opset 13 (`OPSET`): the first opset whose QuantizeLinear/DequantizeLinear take a per-channel `axis`, which the
int8 path needs for per-channel weights; every op the three families export to (Conv, ConvTranspose, MaxPool,
Resize, Pad, Concat, Relu, Sigmoid and shape arithmetic) exists in it; and it stays within what older consumers
read (Vastai's zoo compiles opset-11 UNets; TVM's ONNX frontend, which vamc's `tvm_vacc` backend appears to build
on, reads opset 13).

Exporter: torch's TorchScript-based exporter (`dynamo=False`). The torch.export-based one, torch's default since
2.9, needs the onnxscript package, which is not a dependency. Tracing records shape arithmetic as graph ops (e.g.
milesial's padding of each up-sampled map to its skip map), so the exported graph takes any H and W the model
takes. The batch axis is always dynamic; H and W are dynamic unless `input_size` fixes them (vamc compiles for one
input shape). BatchNorm is folded into the convolutions (eval-mode export with constant folding).
"""

from __future__ import annotations

import io
import json
import warnings
from typing import TYPE_CHECKING, Any

from pipeline.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    import onnx

    from pipeline.models import LoadedModel

OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "output"
TRACE_SIZE = 64  # height and width of the example input traced for a dynamic-size export


def import_onnx() -> Any:
    """The `onnx` module, or BackendUnavailable saying how to install it."""
    try:
        import onnx
    except ImportError as err:
        raise BackendUnavailable(
            "ONNX export needs the onnx package: pip install 'unet-pipeline[onnx]' (onnx and onnxruntime), or "
            "use --backend torch.") from err
    return onnx


def trace_size(loaded: LoadedModel) -> tuple[int, int]:
    """(H, W) of the example input for a dynamic-size export: TRACE_SIZE, rounded up to the model's divisor."""
    divisor = loaded.family.input_divisor
    side = max(divisor, -(-TRACE_SIZE // divisor) * divisor)
    return side, side


def check_input_size(loaded: LoadedModel, input_size: tuple[int, int]) -> None:
    """ConfigError unless (H, W) are positive multiples of the model's input divisor."""
    divisor = loaded.family.input_divisor
    height, width = input_size
    if height <= 0 or width <= 0 or height % divisor or width % divisor:
        up = [max(divisor, -(-max(v, 1) // divisor) * divisor) for v in (height, width)]
        raise ConfigError(
            f"Cannot export {loaded.family.name} for input {height}x{width}: its height and width must be "
            f"positive multiples of {divisor}. Use e.g. --input-size {up[0]}x{up[1]}.")


def _inline_shared_initializers(model: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes by initializers of their own.

    The exporter stores equal constants once (e.g. the zero biases BatchNorm folding gives an untrained layer)
    and feeds the other users through Identity nodes; quantizers expect a convolution's bias to be an
    initializer, so each user gets its own copy.
    """
    import onnx

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            kept.append(onnx.NodeProto.FromString(node.SerializeToString()))
    del graph.node[:]
    graph.node.extend(kept)


def export_onnx(loaded: LoadedModel, input_size: tuple[int, int] | None = None, *,
                opset: int = OPSET) -> onnx.ModelProto:
    """The model as a checked ONNX graph: input "input" (N, C, H, W) float32 -> output "output" (N, K, H, W).

    Args:
        loaded: the model and its checkpoint (`pipeline.models.load_model`).
        input_size: (H, W) to fix the spatial size (what vamc compiles); None keeps H and W dynamic.
        opset: ONNX opset (see the module docstring for why 13).

    Returns:
        The ModelProto, with metadata: family, source, checkpoint sha256, model config, input policy.

    Raises:
        BackendUnavailable: onnx is not installed. ConfigError: an input size the model cannot take.
    """
    import torch

    onnx = import_onnx()
    if input_size is not None:
        check_input_size(loaded, input_size)
    height, width = input_size or trace_size(loaded)
    module = loaded.module.eval()
    channels = int(module.in_channels)
    example = torch.zeros(1, channels, height, width)
    axes = {0: "batch"} if input_size is not None else {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter announces its own deprecation; tracing warns about Python-side input checks (e.g.
        # zhixuhao's divisor check) that produce no graph ops; constant folding skips the reversed Slice that
        # exports F.pad's pad list (zhixuhao's Keras 'same' padding). None of them changes the exported graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
    model = onnx.load_from_string(buffer.getvalue())
    _inline_shared_initializers(model)
    policy = f"{height}x{width}" if input_size is not None else "dynamic"
    metadata = {
        "unet_pipeline.model": loaded.family.name,
        "unet_pipeline.source": loaded.family.source,
        "unet_pipeline.checkpoint_sha256": loaded.checkpoint.sha256,
        "unet_pipeline.config": json.dumps(loaded.config, sort_keys=True),
        "unet_pipeline.input_size": policy,
    }
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model
