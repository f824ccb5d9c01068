"""Reduced-precision ONNX models for the onnx backend.

* `fp16`: fp16 numerics emulated in an fp32 graph (weights and stored activations rounded to fp16).
* `thresholds`: activation clipping thresholds from histograms (KL divergence, percentile).
* `calibration`: activation statistics over calibration images, and the ranges each method picks.
* `int8`: static QDQ int8 quantization with those ranges (onnxruntime's quantizer).
"""

CALIBRATION_METHODS = ("entropy", "percentile", "minmax")
PRECISIONS = ("fp32", "fp16", "int8")
