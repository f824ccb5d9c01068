"""Clipping thresholds for int8 activations, from a histogram of |x| (bin k counts |x| in [k, k+1) * width).

`kl_threshold` is TensorRT's entropy calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017) as
NVIDIA's pytorch-quantization computes it (TensorRT/tools/pytorch-quantization, `calib/histogram.py`,
`_compute_amax_entropy`): the calibration method `kl_pytorch_quantization` (alias `entropy`; the slide's
classic variant is `kl_tensorrt.kl_threshold_tensorrt`). Its arithmetic:

* the first bin is replaced by the second (it holds the exact zeros a ReLU produces; left in, that spike
  dominates every divergence and drives the threshold down to the smallest candidate);
* for every candidate i = 128 .. bins (the first i bins are kept):
  P = hist[:i] with the count of everything beyond (the clipped outliers) added to its last bin;
  Q = hist[:i] merged into `levels` groups of equal width (bin k joins group floor(k * levels / i)), each
  group's count spread evenly over its non-zero bins (zero bins stay zero);
  divergence = KL(P || Q) of the normalised distributions (+inf where P has mass that Q lacks);
* the threshold is the upper edge i * width of the candidate with the smallest divergence (the last one on
  ties, as NVIDIA's code takes it).

`levels` is 128 for a signed tensor (int8: 128 steps per side) and 256 for a non-negative one (uint8).
TVM's `kl_divergence` (the lineage of Vastai vamc's) minimises the same divergence with MXNet's variant of the
arithmetic (symmetric histogram, smoothing instead of the zero-bin fix, about 128 levels for a non-negative
tensor: closer to `kl_tensorrt`, see `pipeline.quantize.methods`); vamc's own code is not public.

The divergences of all candidates are computed at once from prefix sums (module docstring of
`kl_divergences`); tests compare them with a per-candidate loop written after NVIDIA's code.
"""

from __future__ import annotations

import numpy as np

START_BIN = 128
DEFAULT_PERCENTILE = 99.99


def _x_log_x(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0, values * np.log(np.where(values > 0, values, 1.0)), 0.0)


def kl_divergences(histogram: np.ndarray, levels: int, start_bin: int = START_BIN) -> tuple[np.ndarray,
                                                                                            np.ndarray]:
    """(candidates i = start_bin .. bins, KL(P || Q) of each), as the module docstring defines them.

    With p_k the kept counts (outliers in the last), q_k = S_g / n_g on the non-zero bins of group g (S_g its
    count, n_g its non-zero bins), P = sum p (all data) and Q = sum q (the kept data):

        KL = (sum p log p - sum p log q) / P - log P + log Q,   sum p log q = sum_g S_g log(S_g / n_g) +
        outliers
        * log q_(i-1),

    every sum a difference of prefix sums, so all candidates cost O(candidates x levels).

    Raises:
        ValueError: not a 1-D histogram with more than start_bin bins, or levels < 2.
    """
    hist = np.asarray(histogram, dtype=np.float64).copy()
    if hist.ndim != 1 or hist.size <= start_bin or levels < 2 or start_bin < 1:
        raise ValueError(f"Expected a 1-D histogram of more than {start_bin} bins and levels >= 2, got shape "
                         f"{hist.shape} and levels={levels}.")
    hist[0] = hist[1]
    total = hist.sum()
    counts = np.concatenate([[0.0], np.cumsum(hist)])
    nonzeros = np.concatenate([[0], np.cumsum(hist != 0)])
    entropy_terms = np.concatenate([[0.0], np.cumsum(_x_log_x(hist))])
    candidates = np.arange(start_bin, hist.size + 1)
    i = candidates[:, None]
    group = np.arange(levels)[None, :]
    starts = (group * i + levels - 1) // levels  # first bin k with k * levels >= group * i
    stops = ((group + 1) * i + levels - 1) // levels
    sums = counts[stops] - counts[starts]
    members = nonzeros[stops] - nonzeros[starts]
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(members > 0, sums / np.maximum(members, 1), 0.0)
        kept_p_log_q = np.sum(np.where(sums > 0, sums * np.log(np.where(sums > 0, spread, 1.0)), 0.0), axis=1)
        last = hist[candidates - 1]
        outliers = total - counts[candidates]
        last_spread = spread[np.arange(candidates.size), (candidates - 1) * levels // candidates]
        p_log_p = entropy_terms[candidates] - _x_log_x(last) + _x_log_x(last + outliers)
        p_log_q = kept_p_log_q + np.where(outliers > 0, outliers * np.log(np.where(last > 0, last_spread,
                                                                                   1.0)), 0.0)
        divergences = (p_log_p - p_log_q) / total - np.log(total) + np.log(counts[candidates])
    divergences = np.where((outliers > 0) & (last == 0), np.inf, divergences)
    return candidates, divergences


def kl_threshold(histogram: np.ndarray, bin_width: float, levels: int) -> float:
    """The clipping threshold of |x| that minimises KL(P || Q) (TensorRT's entropy calibration)."""
    candidates, divergences = kl_divergences(histogram, levels)
    last_minimum = divergences.size - 1 - int(np.argmin(divergences[::-1]))
    return float(candidates[last_minimum] * bin_width)


def percentile_threshold(histogram: np.ndarray, bin_width: float,
                         percentile: float = DEFAULT_PERCENTILE) -> float:
    """The bin edge where |x|'s cumulative share reaches `percentile` % (NVIDIA's percentile calibration)."""
    hist = np.asarray(histogram, dtype=np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    index = int(np.searchsorted(np.cumsum(hist / total), percentile / 100.0))
    return float(min(index, hist.size) * bin_width)
