"""Reduced-precision ONNX models for the onnx backend.

* `methods`: the calibration method names (the one owner of them), their aliases and vamc's names.
* `fp16`: fp16 numerics emulated in an fp32 graph (weights and stored activations rounded to fp16).
* `thresholds`, `kl_tensorrt`: activation clipping thresholds from histograms (KL divergence in NVIDIA's
  pytorch-quantization and classic TensorRT variants, percentile).
* `calibration`: activation statistics over calibration images, and the ranges each method picks.
* `int8`: static QDQ int8 quantization with those ranges (onnxruntime's quantizer).
"""

from pipeline.quantize.methods import calibration_names

CALIBRATION_METHODS = calibration_names()  # every accepted --calibration value, aliases included
