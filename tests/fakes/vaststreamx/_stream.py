"""Graph and Stream: pre-processing op(s) + model op, built once, run synchronously."""

from __future__ import annotations

import threading

from vaststreamx._data import GraphOutputType, Image, StreamBalanceMode, Tensor
from vaststreamx._device import fake_reset_init, require_device
from vaststreamx._model import ModelOperator
from vaststreamx._ops import BuildinOperator

_run_log: list[tuple[int, int, str]] = []


def fake_run_sync_calls() -> list[tuple[int, int, str]]:
    """(die, number of inputs, thread name) of every run_sync call in this process, oldest first."""
    return list(_run_log)


def fake_reset() -> None:
    """Empty the run log and forget the runtime's initialisation (get_all_cards then needs a set_device)."""
    _run_log.clear()
    fake_reset_init()


class Graph:
    def __init__(self, output_type: GraphOutputType = GraphOutputType.GRAPH_OUTPUT_TYPE_NCHW_DEVICE) -> None:
        if not isinstance(output_type, GraphOutputType):
            raise TypeError("Graph(): output_type must be a vaststreamx.GraphOutputType, got "
                            f"{output_type!r}")
        self.output_type = output_type
        self.operators: list[BuildinOperator | ModelOperator] = []

    def add_operators(self, *ops: BuildinOperator | ModelOperator) -> None:
        for op in ops:
            if not isinstance(op, (BuildinOperator, ModelOperator)):
                raise TypeError(f"add_operators(): {type(op).__name__} is not a vaststreamx operator")
        self.operators.extend(ops)


class Stream:
    """Image mode only: exactly one fusion op, then the model op; the model op's output registered."""

    def __init__(self, graph: Graph, mode: StreamBalanceMode) -> None:
        if not isinstance(graph, Graph) or not isinstance(mode, StreamBalanceMode):
            raise TypeError("Stream(graph, mode): expected a vaststreamx.Graph and a "
                            "vaststreamx.StreamBalanceMode")
        self.graph = graph
        self.mode = mode
        self._output: ModelOperator | None = None
        self._built = False

    def register_operator_output(self, op: ModelOperator) -> None:
        if not isinstance(op, ModelOperator) or op not in self.graph.operators:
            raise RuntimeError("register_operator_output(): pass the graph's ModelOperator")
        self._output = op

    def build(self) -> None:
        ops = self.graph.operators
        shape_ok = (len(ops) == 2 and isinstance(ops[0], BuildinOperator) and isinstance(ops[1],
                                                                                         ModelOperator))
        if not shape_ok:
            raise RuntimeError("build(): this runtime builds a graph of one pre-processing fusion op "
                               "followed by one ModelOperator (add_operators(*ops, model_op))")
        if self._output is None:
            raise RuntimeError("build(): no operator output registered (register_operator_output(model_op))")
        self._built = True

    def run_sync(self, inputs: list[Image]) -> list[list[Tensor]]:
        """One list of output tensors per input image, in input order.

        The calling thread must have bound the model's die (VastStreamX-Samples' profilers call set_device in
        every thread that runs a model), and every image must have been made for that die.
        """
        if not self._built:
            raise RuntimeError("run_sync(): the stream is not built; call build() first")
        fusion, model = self.graph.operators[0], self._output.model
        require_device("run_sync()", model.device_id)
        if not isinstance(inputs, list) or not all(isinstance(i, Image) for i in inputs):
            raise RuntimeError("run_sync(): expected a list of vaststreamx.Image (image mode)")
        if not 1 <= len(inputs) <= model.batch_size:
            raise RuntimeError(f"run_sync(): {len(inputs)} inputs for a model of batch size "
                               f"{model.batch_size}")
        for image in inputs:
            if image.device_id != model.device_id:
                raise RuntimeError(f"run_sync(): an image on die {image.device_id} for a model on die "
                                   f"{model.device_id}")
        _run_log.append((model.device_id, len(inputs), threading.current_thread().name))
        return [[Tensor(model.infer(fusion.process(image)), model.device_id)] for image in inputs]
