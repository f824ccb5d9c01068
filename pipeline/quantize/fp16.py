"""fp16 numerics, emulated in an fp32 ONNX graph (for CPUs, which have no fast fp16 convolutions).

What an fp16 accelerator build computes (Vastai's "fp16": weights and activations in half precision) is
reproduced as fp16 storage with fp32 arithmetic:

* every float weight and constant is rounded to the nearest fp16 value (kept as fp32);
* every float activation that enters a computing op (convolutions, resize, arithmetic, ...) and every graph
  output is rounded to fp16 by a Cast(fp16) -> Cast(fp32) pair; the input image is rounded too.

Ops that map fp16 values to fp16 values exactly (ReLU, max-pool, concat, zero padding, reshapes) need no
rounding of their own, so ReLU stays fusable with the convolution before it. Accumulation inside a convolution
stays fp32, as on fp16 hardware that accumulates in fp32. onnxruntime's own fp16 conversion was not used: its
CPU provider computes such graphs largely in fp32 (inserting casts and dropping redundant pairs), which
measured half the error of a real fp16 forward pass; this emulation matches torch's fp16 error.
"""

from __future__ import annotations

import numpy as np

VALUE_PRESERVING_OPS = frozenset({
    "Relu", "MaxPool", "Concat", "Pad", "Reshape", "Transpose", "Slice", "Identity", "Flatten", "Squeeze",
    "Unsqueeze", "Split", "Gather", "Shape", "Size", "Cast", "Constant", "ConstantOfShape", "Expand", "Tile",
})
SUFFIX = "/fp16"


def _round_tensor(tensor) -> None:
    from onnx import TensorProto, numpy_helper

    if tensor.data_type == TensorProto.FLOAT:
        rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))


def _round_pair(source: str, target: str) -> list:
    from onnx import TensorProto, helper

    half = target + "/half"
    return [helper.make_node("Cast", [source], [half], to=TensorProto.FLOAT16, name=half + "/cast"),
            helper.make_node("Cast", [half], [target], to=TensorProto.FLOAT, name=target + "/cast")]


def emulate_fp16(model):
    """A copy of `model` (an fp32 ModelProto) computing with fp16-rounded weights and activations."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inferred = onnx.shape_inference.infer_shapes(out).graph
    floats = {vi.name for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output)
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    for init in graph.initializer:
        _round_tensor(init)
    constants = {init.name for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
            for attribute in node.attribute:
                if attribute.name == "value":
                    _round_tensor(attribute.t)
    outputs = {o.name for o in graph.output}
    rounded: dict[str, str] = {}  # activation -> its fp16-rounded name
    for node in graph.node:
        if node.op_type in VALUE_PRESERVING_OPS:
            continue
        for name in node.input:
            if name in floats and name not in constants and name not in outputs:
                rounded.setdefault(name, name + SUFFIX)
    # Graph outputs: the producer writes a raw tensor, the rounding pair writes the output's own name.
    raw_outputs = {name: name + "/fp32" for name in outputs if name in floats}
    nodes = [pair for i in graph.input if i.name in rounded for pair in _round_pair(i.name, rounded[i.name])]
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rounded:
                node.input[index] = rounded[name]
        produced = list(node.output)
        for index, name in enumerate(produced):
            if name in raw_outputs:
                node.output[index] = raw_outputs[name]
        nodes.append(node)
        for name in produced:
            if name in raw_outputs:
                nodes.extend(_round_pair(raw_outputs[name], name))
            if name in rounded:
                nodes.extend(_round_pair(name, rounded[name]))
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    onnx.checker.check_model(out)
    return out
