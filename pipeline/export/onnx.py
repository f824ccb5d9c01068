"""Export a loaded model to ONNX: dynamic for onnxruntime, or static and folded for Vastai's compiler (vamc).

Two exports, one per consumer:

* `export_onnx` (the onnx backend): opset 13 (`OPSET`), the first whose QuantizeLinear/DequantizeLinear take a
  per-channel `axis`, which the int8 path needs; a dynamic batch axis, and H and W dynamic unless `input_size`
  fixes them. Tracing records shape arithmetic as graph ops (e.g. milesial's padding of each up-sampled map to
  its skip map: Shape/Gather/Sub/Div/Cast/Unsqueeze/Concat/ConstantOfShape/Reshape/Slice/Transpose computing
  the Pad inputs, 297 nodes for the packaged model), so the graph takes any H and W the model takes.
* `export_static_onnx` (`unet-pipeline export`, for vamc): what Vastai's zoo compiles, i.e. opset 11
  (`STATIC_OPSET`: the zoo exports its UNets with `torch.onnx.export(..., opset_version=11)`, and every op
  the three families need exists in it) and one static input shape [1, C, H, W] (the zoo's `frontend.shape`).
  The raw static trace still computes the Pad inputs from constants (113 nodes for the packaged model, as the
  zoo's own export of milesial's UNet); onnxslim then folds every constant sub-graph and removes the no-op
  pads, leaving the network's own ops (49 for the packaged model: Conv, ConvTranspose, Relu, MaxPool, Concat).
  `static_graph_problems` checks the result: no dynamic dimension, no Shape/Size op, no node left whose inputs
  are all constants. onnxslim (pure Python) was chosen over onnxsim (the tool the zoo's docs use; a compiled
  extension) after both gave the same ops on all four families.

Exporter: torch's TorchScript-based exporter (`dynamo=False`). The torch.export-based one, torch's default
since 2.9, needs the onnxscript package, which is not a dependency. BatchNorm is folded into the convolutions
(eval-mode export with constant folding).
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
STATIC_OPSET = 11
SHAPE_OPS = frozenset({"Shape", "Size"})  # ops that read a tensor's shape: none may remain in a static export
INPUT_NAME = "input"
OUTPUT_NAME = "output"
TRACE_SIZE = 64  # height and width of the example input traced for a dynamic-size export


def import_onnx() -> Any:
    """The `onnx` module, or BackendUnavailable saying how to install it."""
    try:
        import onnx
    except ImportError as err:
        raise BackendUnavailable(
            "ONNX export needs the onnx package, a dependency of unet-pipeline: pip install onnx "
            "onnxruntime onnxslim (or reinstall unet-pipeline), or use --backend torch.") from err
    return onnx


def import_onnxslim() -> Any:
    """The `onnxslim` module, or BackendUnavailable saying how to install it."""
    try:
        import onnxslim
    except ImportError as err:
        raise BackendUnavailable(
            "The static ONNX export for vamc folds constants with onnxslim, a dependency of "
            "unet-pipeline: pip install onnxslim (or reinstall unet-pipeline).") from err
    return onnxslim


def trace_size(loaded: LoadedModel) -> tuple[int, int]:
    """(H, W) of the example input for a dynamic-size export: TRACE_SIZE rounded up to the model's divisor."""
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
    onnx = import_onnx()
    if input_size is not None:
        check_input_size(loaded, input_size)
    height, width = input_size or trace_size(loaded)
    axes = {0: "batch"} if input_size is not None else {0: "batch", 2: "height", 3: "width"}
    model = onnx.load_from_string(_torch_export(loaded, (height, width), opset, axes))
    _inline_shared_initializers(model)
    _set_metadata(model, loaded, f"{height}x{width}" if input_size is not None else "dynamic")
    onnx.checker.check_model(model, full_check=True)
    return model


def _torch_export(loaded: LoadedModel, size: tuple[int, int], opset: int, axes: dict[int,
                                                                                     str] | None) -> bytes:
    """torch.onnx.export of the module for a (1, C, H, W) example; `axes` None: every dimension static."""
    import torch

    module = loaded.module.eval()
    example = torch.zeros(1, loaded.in_channels, *size)
    dynamic_axes = {INPUT_NAME: axes, OUTPUT_NAME: axes} if axes else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter announces its own deprecation; tracing warns about Python-side input checks
        # (e.g. zhixuhao's divisor check) that produce no graph ops; constant folding skips the reversed Slice
        # that exports F.pad's pad list (zhixuhao's Keras 'same' padding). None of them changes the exported
        # graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(module, (example,), buffer,  # type: ignore[arg-type]  # a file-like object works
                          dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes)
    return buffer.getvalue()


def _set_metadata(model: onnx.ModelProto, loaded: LoadedModel, policy: str) -> None:
    import onnx

    metadata = {
        "unet_pipeline.model": loaded.family.name,
        "unet_pipeline.source": loaded.family.source,
        "unet_pipeline.checkpoint_sha256": loaded.checkpoint.sha256,
        "unet_pipeline.config": json.dumps(loaded.config, sort_keys=True),
        "unet_pipeline.input_size": policy,
    }
    onnx.helper.set_model_props(model, metadata)


def static_graph_problems(model: onnx.ModelProto) -> list[str]:
    """What keeps `model` from being a static, folded graph: dynamic dimensions, ops that read shapes, and
    nodes whose inputs are all constants (a computation the folding left in). Empty when there is none."""
    graph = model.graph
    problems = []
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") for d in dims):
            problems.append(f"{value.name} has a dynamic shape")
    constants = {init.name for init in graph.initializer}
    constants.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    for node in graph.node:
        if node.op_type in SHAPE_OPS:
            problems.append(f"{node.op_type} node {node.name or node.output[0]} reads a shape")
        elif node.op_type != "Constant" and all(name in constants for name in node.input if name):
            problems.append(f"{node.op_type} node {node.name or node.output[0]} computes from constants only")
    return problems


def export_static_onnx(loaded: LoadedModel, input_size: tuple[int, int], *,
                       opset: int = STATIC_OPSET) -> onnx.ModelProto:
    """The model as vamc compiles it: input "input" (1, C, H, W) -> output "output" (1, K, H, W), every shape
    static, every constant computation folded (see the module docstring).

    Args:
        loaded: the model and its checkpoint (`pipeline.models.load_model`).
        input_size: (H, W) of the network input.
        opset: ONNX opset (11, the zoo's).

    Returns:
        The checked ModelProto, with the same metadata as `export_onnx` (input_size "HxW").

    Raises:
        BackendUnavailable: onnx or onnxslim is not installed. ConfigError: an input size the model cannot
        take. RuntimeError: the folded graph still computes shapes (a model this export does not know how to
        fold).
    """
    onnx = import_onnx()
    onnxslim = import_onnxslim()
    check_input_size(loaded, input_size)
    raw = onnx.load_from_string(_torch_export(loaded, input_size, opset, None))
    model = onnxslim.slim(raw)
    problems = static_graph_problems(model)
    if problems:
        raise RuntimeError(f"The static export of {loaded.family.name} still has {len(problems)} problem(s) "
                           f"after folding ({'; '.join(problems[:3])}): report it with the model and "
                           "--input-size.")
    height, width = input_size
    _set_metadata(model, loaded, f"{height}x{width}")
    onnx.checker.check_model(model, full_check=True)
    return model


def difference_from_torch(loaded: LoadedModel, model: onnx.ModelProto, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| of the outputs for one random input of the ONNX model's static shape."""
    import numpy as np
    import onnxruntime as ort
    import torch

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x})[0]
    with torch.no_grad():
        expected = loaded.module.eval()(torch.from_numpy(x)).numpy()
    return float(np.abs(got - expected).max())
