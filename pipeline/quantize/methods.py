"""The int8 calibration methods: their names, aliases, what each computes and what vamc calls it.

This module is the one owner of calibration method names. Every place that offers or checks a method (the
CLI's `--calibration` choice, `calibration.activation_range`, the ONNX cache key, the vamc build
configuration, the table's side-by-side int8 rows) reads `CALIBRATIONS`, `calibration_names()`,
`canonical_name()` or `KL_VARIANTS` from here.

Methods (the range each gives one activation tensor, from its statistics over the calibration images):

* `kl_pytorch_quantization`: the KL-divergence threshold as NVIDIA's pytorch-quantization computes it
  (`calib/histogram.py::_compute_amax_entropy`): the zero bin is replaced by its neighbour (so a ReLU's spike
  of exact zeros does not count), 256 levels for a tensor that is never negative and 128 for a signed one,
  bins grouped by `np.digitize`, upper edge of the last minimum (`thresholds.kl_threshold`).
* `kl_tensorrt`: the classic TensorRT entropy calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017):
  always 128 levels, no special case for the zero bin, bins merged into levels proportionally (a bin split
  between two levels counts in each by its overlap), threshold (m + 0.5) bin widths at the first minimum
  (`kl_tensorrt.kl_threshold_tensorrt`). On ReLU outputs the zero spike pulls its thresholds well below the
  other variant's; on signed tensors the two agree closely.
* `percentile`: |x| clipped where its histogram reaches 99.99 %.
* `minmax`: [min, max] as observed.

`entropy` is an alias of `DEFAULT_KL` (kl_pytorch_quantization: what `entropy` has always computed here, so
existing runs, caches and recorded results keep their meaning).

vamc (Vastai's compiler) has a single `kl_divergence` mode; its code is not public. Its backend is `tvm_vacc`
and TVM's `kl_divergence` calibration (relay.quantize, after MXNet's `_get_optimal_threshold`) keeps the zero
bin as it is and gives a non-negative tensor about 128 levels (a symmetric histogram quantized to 255 levels,
half of them on the empty negative side): the two traits of `kl_tensorrt`, so that is the variant vamc's most
likely behaves like. Both KL variants are written to a vamc build as `kl_divergence`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.registry import Registry


@dataclass(frozen=True)
class CalibrationMethod:
    """One way of choosing an int8 activation range.

    Attributes:
        name: the canonical name (a registry key).
        summary: one line for help texts and tables.
        vamc_mode: vamc's `quantize.calibrate_mode` for it (the zoo's names: kl_divergence, percentile, max).
    """

    name: str
    summary: str
    vamc_mode: str


KL_PYTORCH_QUANTIZATION = "kl_pytorch_quantization"
KL_TENSORRT = "kl_tensorrt"
PERCENTILE = "percentile"
MINMAX = "minmax"
DEFAULT_KL = KL_PYTORCH_QUANTIZATION
ENTROPY_ALIAS = "entropy"
DEFAULT = ENTROPY_ALIAS  # the default --calibration value
KL_VARIANTS = (KL_PYTORCH_QUANTIZATION, KL_TENSORRT)  # shown side by side by `table`

CALIBRATIONS = Registry[CalibrationMethod]("calibration method")
CALIBRATIONS.register(KL_PYTORCH_QUANTIZATION, CalibrationMethod(
    KL_PYTORCH_QUANTIZATION,
    "KL divergence, NVIDIA pytorch-quantization (zero bin ignored, 256 levels if >= 0)",
    "kl_divergence"))
CALIBRATIONS.register(KL_TENSORRT, CalibrationMethod(
    KL_TENSORRT, "KL divergence, classic TensorRT (128 levels, zero bin kept; likely vamc's)",
    "kl_divergence"))
CALIBRATIONS.register(PERCENTILE, CalibrationMethod(PERCENTILE, "99.99th percentile of |x|", "percentile"))
CALIBRATIONS.register(MINMAX, CalibrationMethod(MINMAX, "observed min and max", "max"))
CALIBRATIONS.register(ENTROPY_ALIAS, CALIBRATIONS.get(DEFAULT_KL))  # alias: the same record


def calibration_names() -> tuple[str, ...]:
    """Every name `--calibration` accepts, canonical names first, then aliases."""
    return tuple(CALIBRATIONS.names())


def get_method(name: str) -> CalibrationMethod:
    """The method of a name or alias.

    Raises:
        UnknownNameError: an unknown name (the message lists the valid ones and the closest).
    """
    return CALIBRATIONS.get(name)


def canonical_name(name: str) -> str:
    """`entropy` -> `kl_pytorch_quantization`; a canonical name -> itself (UnknownNameError otherwise)."""
    return get_method(name).name


def is_alias(name: str) -> bool:
    return name in CALIBRATIONS and get_method(name).name != name


def table_calibrations(precision: str, requested: str | None = None) -> tuple[str | None, ...]:
    """The calibration methods `table` scores one backend:precision variant with, each in a row of its own.

    int8 with a KL method (either variant or `entropy`) or none asked for: both KL variants, `KL_VARIANTS`
    order, so the table shows which int8 range choice the model tolerates; int8 with percentile or minmax:
    that one (canonical name); fp32 and fp16: (None,), no calibration.

    Raises:
        UnknownNameError: an unknown `requested` method.
    """
    if precision != "int8":
        return (None,)
    name = canonical_name(requested or DEFAULT)
    return KL_VARIANTS if name in KL_VARIANTS else (name,)


def precision_label(precision: str, calibration: str | None) -> str:
    """A table's precision cell: `int8 (kl_tensorrt)` for a calibrated row, the precision alone otherwise."""
    return (f"{precision} ({canonical_name(calibration)})" if precision == "int8" and calibration
            else precision)
