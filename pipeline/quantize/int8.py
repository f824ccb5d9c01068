"""Static int8 quantization (QDQ) of an fp32 ONNX model with activation ranges computed elsewhere.

onnxruntime's `quantize_static` does the graph rewriting: QuantizeLinear/DequantizeLinear pairs around every
quantizable op, int8 weights per output channel, uint8 activations (asymmetric: scale and zero point from each
tensor's range), int32 biases. The activation ranges are this package's (`calibration.activation_ranges`),
handed over through quantize_static's calibration cache, so onnxruntime's own calibrators never run.

`reduce_range=True` stores weights in 7 bits: onnxruntime's int8 kernels on x86 CPUs without VNNI or AMX can
saturate 16-bit intermediate sums otherwise, which measured 10-17x the error of an exact simulation
(shared/reference/cpu-inference.md); the cost is one bit of weight resolution. With VNNI or AMX the sums are
32-bit and full 8-bit weights are exact: the caller decides from the CPU (`pipeline.cpu_features`).
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.errors import BackendUnavailable

PER_CHANNEL = True
REDUCE_RANGE = True  # the default where the CPU's features are unknown


class _DropPreprocessAdvice(logging.Filter):
    """onnxruntime logs advice to run its shape-inference pre-processing, which does not apply: the export
    already folds BatchNorm and carries full shape information."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "consider" not in record.getMessage() or "pre-process" not in record.getMessage()


@contextmanager
def _quiet_advice() -> Iterator[None]:
    root = logging.getLogger()
    advice = _DropPreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize_int8(model, ranges: dict[str, tuple[float, float]], reduce_range: bool = REDUCE_RANGE):
    """The QDQ int8 version of `model` (an fp32 ModelProto), using `ranges` for the activations; weights in 7
    bits with `reduce_range` (CPUs without VNNI/AMX), else 8.

    Raises:
        BackendUnavailable: an onnxruntime too old to take precomputed ranges.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        TensorData,
        TensorsData,
        quantize_static,
        save_tensors_data,
    )

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise BackendUnavailable(
            "--precision int8 hands its calibration to onnxruntime's "
            f"quantize_static(calibration_cache_path=...), which onnxruntime {onnxruntime.__version__} "
            "lacks: pip install 'onnxruntime>=1.32'.")
    # The cache's method label must equal calibrate_method; the ranges themselves are ours, whatever the
    # label.
    data = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
        for name, (low, high) in ranges.items()})
    with tempfile.TemporaryDirectory(prefix="unet-pipeline-int8-") as folder:
        cache, output = Path(folder) / "ranges.json", Path(folder) / "int8.onnx"
        save_tensors_data(data, cache)
        with _quiet_advice():
            quantize_static(model, output, None, quant_format=QuantFormat.QDQ, per_channel=PER_CHANNEL,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            calibration_cache_path=cache)
        return onnx.load(str(output))
