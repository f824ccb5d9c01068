"""int8 calibration: both KL threshold searches against slow references of their published algorithms,
percentiles, statistics, ranges, and the one registry of method names."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import entropy

from pipeline.errors import UnknownNameError
from pipeline.quantize import CALIBRATION_METHODS, methods
from pipeline.quantize.calibration import (
    BINS,
    HISTOGRAM_CHUNK,
    TensorStats,
    abs_histogram,
    activation_range,
    collect_statistics,
    tensors_to_calibrate,
)
from pipeline.quantize.kl_tensorrt import kl_divergences_tensorrt, kl_threshold_tensorrt
from pipeline.quantize.thresholds import kl_divergences, kl_threshold, percentile_threshold


def reference_divergences(histogram: np.ndarray, levels: int, start_bin: int = 128) -> np.ndarray:
    """NVIDIA's `_compute_amax_entropy` (pytorch-quantization calib/histogram.py), one candidate at a time."""
    bins = np.array(histogram, dtype=np.float64)
    bins[0] = bins[1]
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=levels + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        density = np.zeros(levels)
        for idx, group in enumerate(digitized):
            if group != -1:
                density[group] += bins[idx]
        for group, members in Counter(digitized).items():
            if group != -1:
                density[group] /= members
        q = np.array([density[g] if g != -1 else 0.0 for g in digitized])
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        divergences.append(entropy(p, q))
    return np.array(divergences)


def tensorrt_reference_divergences(histogram: np.ndarray, levels: int = 128,
                                   start_bin: int = 128) -> np.ndarray:
    """The classic algorithm of Migacz's GTC 2017 slide, one candidate at a time:

    for i in range(128, bins): P = bin[0..i-1], outliers added to P[i-1]; Q = bin[0..i-1] quantized into 128
    levels (level j spans i / 128 bins; a bin split between levels counts in each by its overlap) and expanded
    back over the non-empty bins in proportion to their overlap; divergence = KL(P || Q).
    """
    bins = np.array(histogram, dtype=np.float64)
    divergences = []
    for i in range(start_bin, len(bins)):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        width = i / levels
        q = np.zeros(i)
        for level in range(levels):
            low, high = level * width, (level + 1) * width
            count, weight, members = 0.0, 0.0, []
            for k in range(int(np.floor(low)), int(np.ceil(high))):
                overlap = min(high, k + 1) - max(low, k)
                if overlap <= 0:
                    continue
                count += overlap * bins[k]
                if bins[k] != 0:
                    weight += overlap
                    members.append((k, overlap))
            for k, overlap in members:
                q[k] += count / weight * overlap
        divergences.append(entropy(p, q))
    return np.array(divergences)


def histogram_of(values: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, float]:
    magnitudes = np.abs(values)
    width = magnitudes.max() / bins
    return np.bincount(np.minimum((magnitudes / width).astype(np.int64), bins - 1), minlength=bins), width


def _samples(kind: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "gaussian+outliers":  # N(0, 1) and a few far outliers: the classic case for clipping
        return np.concatenate([rng.standard_normal(200_000), [40.0, -38.0, 45.0, 50.0]])
    if kind == "student-t":  # heavy tails
        return rng.standard_t(4, 200_000)
    if kind == "relu":  # half exact zeros, as after a ReLU
        return np.maximum(rng.standard_normal(200_000), 0.0)
    return rng.laplace(0.0, 1.0, 100_000)


@pytest.mark.parametrize("kind", ["student-t", "relu", "laplace"])
@pytest.mark.parametrize("levels", [128, 256])
def test_kl_divergences_equal_the_reference_loop(kind, levels):
    hist, _ = histogram_of(_samples(kind), bins=512)
    candidates, fast = kl_divergences(hist, levels)
    slow = reference_divergences(hist, levels)
    assert candidates.tolist() == list(range(128, 513))
    assert np.array_equal(np.isinf(fast), np.isinf(slow))
    finite = np.isfinite(slow)
    assert finite.sum() > 100
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-9, atol=1e-12)


def test_kl_threshold_at_2048_bins_matches_the_reference_and_clips_outliers():
    values = _samples("gaussian+outliers")
    hist, width = histogram_of(values)
    slow = reference_divergences(hist, 128)
    expected = (len(slow) - 1 - int(np.argmin(slow[::-1])) + 128) * width  # NVIDIA: last minimum, upper edge
    threshold = kl_threshold(hist, width, 128)
    assert threshold == pytest.approx(expected, rel=1e-12)
    # the outliers (|x| up to 50) are clipped; the Gaussian body (|x| < 4.5 here) is kept
    assert 3.5 < threshold < 10.0, threshold
    assert threshold < 0.25 * np.abs(values).max()


def test_kl_threshold_keeps_a_uniform_range_and_ignores_the_relu_zero_spike():
    uniform = np.random.default_rng(1).uniform(0, 1, 100_000)
    hist, width = histogram_of(uniform)
    assert kl_threshold(hist, width, 256) > 0.9  # nothing to gain from clipping a flat distribution
    relu = _samples("relu")
    hist, width = histogram_of(relu)
    assert hist[0] > 0.45 * relu.size  # the spike is there
    threshold = kl_threshold(hist, width, 256)
    assert threshold > 0.5 * relu.max()  # not dragged to the smallest candidate (128 bins = 1/16 of range)


def test_percentile_threshold_matches_numpy():
    values = np.abs(np.random.default_rng(3).standard_normal(500_000))
    hist, width = histogram_of(values)
    assert percentile_threshold(hist, width, 99.99) == pytest.approx(np.percentile(values, 99.99),
                                                                     abs=1.5 * width)
    assert percentile_threshold(hist, width, 50.0) == pytest.approx(np.median(values), abs=1.5 * width)


def test_activation_range_signed_unsigned_and_minmax():
    hist, width = histogram_of(_samples("gaussian+outliers"))
    signed = TensorStats(-38.0, 50.0, hist)
    low, high = activation_range(signed, "entropy")
    assert low == -high and high < 10
    assert activation_range(signed, "minmax") == (-38.0, 50.0)
    relu = _samples("relu")
    unsigned = TensorStats(0.0, float(relu.max()), histogram_of(relu)[0])
    low, high = activation_range(unsigned, "percentile")
    assert low == 0.0 and 0 < high <= relu.max()
    with pytest.raises(UnknownNameError, match="Unknown calibration method 'mse'.*kl_tensorrt"):
        activation_range(signed, "mse")


@pytest.mark.parametrize("kind", ["student-t", "relu", "laplace"])
def test_tensorrt_kl_divergences_equal_the_reference_loop(kind):
    hist, _ = histogram_of(_samples(kind), bins=512)
    candidates, fast = kl_divergences_tensorrt(hist)
    slow = tensorrt_reference_divergences(hist)
    assert candidates.tolist() == list(range(128, 512))  # range(128, bins): all bins kept is no candidate
    assert np.array_equal(np.isinf(fast), np.isinf(slow))
    finite = np.isfinite(slow)
    assert finite.sum() > 50
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-9, atol=1e-12)


def test_tensorrt_threshold_is_half_a_bin_past_the_first_minimum():
    values = _samples("gaussian+outliers")
    hist, width = histogram_of(values)
    slow = tensorrt_reference_divergences(hist)
    expected = (int(np.argmin(slow)) + 128 + 0.5) * width  # the slide: threshold = (m + 0.5) * bin width
    assert kl_threshold_tensorrt(hist, width) == pytest.approx(expected, rel=1e-12)
    assert 3.5 < expected < 10.0  # the outliers are clipped, the Gaussian body kept


def test_the_two_kl_variants_differ_on_relu_outputs_and_agree_on_signed_tensors():
    """The zero spike of a ReLU drags the classic threshold down; the zero-bin fix of pytorch-quantization
    ignores it. A signed tensor has no such spike."""
    relu = np.maximum(np.random.default_rng(5).standard_t(4, 200_000), 0.0)
    hist, width = histogram_of(relu)
    classic, nvidia = kl_threshold_tensorrt(hist, width), kl_threshold(hist, width, 256)
    assert nvidia > 3 * classic, (nvidia, classic)
    signed = np.random.default_rng(6).standard_t(4, 200_000)
    hist, width = histogram_of(signed)
    assert kl_threshold_tensorrt(hist, width) == pytest.approx(kl_threshold(hist, width, 128), rel=0.02)
    stats = TensorStats(0.0, float(relu.max()), histogram_of(relu)[0])
    assert activation_range(stats, "kl_tensorrt") == (0.0, pytest.approx(classic))
    assert activation_range(stats, "entropy") == activation_range(stats, "kl_pytorch_quantization") == (
        0.0, pytest.approx(nvidia))


def test_one_registry_names_every_method_and_entropy_is_the_default_kl_alias():
    assert CALIBRATION_METHODS == ("kl_pytorch_quantization", "kl_tensorrt", "percentile", "minmax",
                                   "entropy")
    assert methods.canonical_name("entropy") == methods.DEFAULT_KL == "kl_pytorch_quantization"
    assert methods.is_alias("entropy") and not methods.is_alias("kl_tensorrt")
    assert set(methods.KL_VARIANTS) == {"kl_pytorch_quantization", "kl_tensorrt"}
    assert {methods.get_method(n).vamc_mode for n in CALIBRATION_METHODS} == {"kl_divergence", "percentile",
                                                                              "max"}
    with pytest.raises(UnknownNameError, match="Did you mean 'kl_tensorrt'"):
        methods.get_method("kl_tensorrtt")


def _tiny_graph():
    """input -> Conv(1x1, 2 ch) -> Relu -> output: small enough to check its statistics by hand."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([[[[1.5]], [[-0.5]]], [[[-2.0]], [[1.0]]]], np.float32)  # (out 2, in 2, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv"]), helper.make_node("Relu", ["conv"], ["output"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2, None, None])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 2, None, None])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), weight


def whole_tensor_histogram(values: np.ndarray, abs_max: float) -> np.ndarray:
    """The bin formula over the whole tensor at once: bin int(|x| * (BINS / abs_max)) in float32, capped."""
    scale = np.float32(BINS / abs_max if abs_max > 0 else 0.0)
    index = np.minimum((np.abs(values.ravel()) * scale).astype(np.int64), BINS - 1)
    return np.bincount(index, minlength=BINS)


@pytest.mark.parametrize("size", [1, 1000, HISTOGRAM_CHUNK, 3 * HISTOGRAM_CHUNK + 17])
def test_abs_histogram_in_chunks_equals_the_whole_tensor_formula(size):
    rng = np.random.default_rng(size)
    values = (rng.standard_normal(size) * 3).astype(np.float32)
    abs_max = float(np.abs(values).max())
    values[rng.integers(0, size, size=min(size, 5))] = np.float32(abs_max)  # on the last bin's upper edge
    for cap in (abs_max, abs_max / 2, 0.0):  # anything above the cap goes to the last bin; 0: all in bin 0
        counts = abs_histogram(values.reshape(1, 1, -1), cap)
        assert counts.sum() == size
        np.testing.assert_array_equal(counts, whole_tensor_histogram(values, cap))
    assert abs_histogram(values, 0.0)[0] == size


def test_collect_statistics_matches_numpy_on_a_tiny_graph():
    model, weight = _tiny_graph()
    rng = np.random.default_rng(0)
    # three images: the second pass reuses the last image's activations and runs the other two again
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in ((1, 2, 5, 7), (1, 2, 3, 4),
                                                                          (1, 2, 6, 3))]
    assert set(tensors_to_calibrate(model)) == {"input", "conv", "output"}
    stats = collect_statistics(model, inputs)
    conv = [np.einsum("oi,nihw->nohw", weight[:, :, 0, 0], x) for x in inputs]
    expected = {"input": inputs, "conv": conv, "output": [np.maximum(c, 0) for c in conv]}
    for name, arrays in expected.items():
        flat = np.concatenate([a.ravel() for a in arrays])
        assert stats[name].minimum == pytest.approx(flat.min(), abs=1e-6)
        assert stats[name].maximum == pytest.approx(flat.max(), abs=1e-6)
        assert stats[name].histogram.sum() == flat.size
        reference, _ = np.histogram(np.abs(flat), bins=BINS, range=(0, np.abs(flat).max()))
        # the same bins up to values on a bin edge (float rounding of |x| / width)
        assert np.abs(stats[name].histogram - reference).sum() <= 4
        if name == "input":  # the others are onnxruntime's sums, which may round otherwise than einsum's
            np.testing.assert_array_equal(stats[name].histogram,
                                          whole_tensor_histogram(flat, stats[name].abs_max))


def test_table_scores_int8_with_both_kl_variants_unless_another_method_is_asked_for():
    assert methods.table_calibrations("int8") == ("kl_pytorch_quantization", "kl_tensorrt")
    assert methods.table_calibrations("int8", "entropy") == methods.table_calibrations("int8", "kl_tensorrt")
    assert methods.table_calibrations("int8", "percentile") == ("percentile",)
    assert methods.table_calibrations("fp16", "kl_tensorrt") == methods.table_calibrations("fp32") == (None,)
    assert methods.precision_label("int8", "entropy") == "int8 (kl_pytorch_quantization)"
    assert methods.precision_label("fp16", None) == "fp16"
    with pytest.raises(UnknownNameError):
        methods.table_calibrations("int8", "kl")
