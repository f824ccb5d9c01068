"""The classic TensorRT entropy calibration: the KL-divergence threshold of a histogram of |x|, 128 levels.

The algorithm of Migacz, "8-bit Inference with TensorRT" (GTC 2017), for a histogram of |x| (bin k counts |x|
in [k, k+1) * width):

* for every candidate i = 128 .. bins - 1 (`range(128, 2048)` on the slide's 2048 bins; the first i bins are
  kept):
  P = hist[:i] with the count of everything beyond (the clipped outliers) added to its last bin;
  Q = hist[:i] merged into 128 levels of i / 128 bins each, then expanded back to i bins;
  divergence = KL(P || Q) of the normalised distributions (+inf where P has mass that Q lacks);
* m = the candidate of the smallest divergence (the first one on ties); threshold = (m + 0.5) bin widths.

The slide leaves the merge of i bins into 128 levels unspecified when i is not a multiple of 128; here it is
proportional: level j covers [j * i / 128, (j + 1) * i / 128) in bin units, and a bin split between two levels
counts in each by its overlap. The expansion spreads each level's count over the non-empty bins it covers,
again in proportion to their overlap (empty bins stay empty), so a split bin takes a share of both levels.
Unlike NVIDIA's pytorch-quantization (`thresholds.kl_divergences`), nothing is done about the first bin: a
ReLU's exact zeros stay in it, and the levels are always 128 (symmetric int8) whether or not the tensor is
signed.

All candidates are computed at once from prefix sums (see `kl_divergences_tensorrt`); the tests compare them
with a per-candidate loop written after the slide.
"""

from __future__ import annotations

import numpy as np

LEVELS = 128
START_BIN = 128


def _x_log_x(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0, values * np.log(np.where(values > 0, values, 1.0)), 0.0)


def _cumulative_at(prefix: np.ndarray, values: np.ndarray, whole: np.ndarray,
                   fraction: np.ndarray) -> np.ndarray:
    """The cumulative sum of `values` up to the real position whole + fraction (bin units)."""
    padded = np.concatenate([values, [0.0]])
    return prefix[whole] + fraction * padded[whole]


def kl_divergences_tensorrt(histogram: np.ndarray, levels: int = LEVELS,
                            start_bin: int = START_BIN) -> tuple[np.ndarray, np.ndarray]:
    """(candidates i = start_bin .. bins - 1, KL(P || Q) of each), as the module docstring defines them.

    With h the histogram, level j of candidate i covering [a_j, b_j) = [j i / L, (j + 1) i / L), S_j its
    (overlap-weighted) count and W_j the overlap-weighted number of its non-empty bins, the expanded Q is
    q_k = sum_j overlap(k, j) S_j / W_j over the non-empty bins. A level spans at least one bin (i >= L), so a
    bin lies inside one level or is split between two neighbours, and

        sum p log q = sum_j (h inside level j) log(S_j / W_j) + sum over split bins h_k log q_k
                      + outliers * log q_(i-1),

    each term from prefix sums; KL = (sum p log p - sum p log q) / P - log P + log Q with P the total count
    and Q = sum_j S_j the kept count.

    Raises:
        ValueError: not a 1-D histogram with more than start_bin bins, or start_bin < levels.
    """
    hist = np.asarray(histogram, dtype=np.float64)
    if hist.ndim != 1 or hist.size <= start_bin or levels < 2 or start_bin < levels:
        raise ValueError(f"Expected a 1-D histogram of more than {start_bin} bins and {levels} <= start_bin, "
                         f"got shape {hist.shape} and start_bin={start_bin}.")
    nonzero = (hist != 0).astype(np.float64)
    total = hist.sum()
    counts = np.concatenate([[0.0], np.cumsum(hist)])
    nonzeros = np.concatenate([[0.0], np.cumsum(nonzero)])
    entropy_terms = np.concatenate([[0.0], np.cumsum(_x_log_x(hist))])
    candidates = np.arange(start_bin, hist.size)
    i = candidates[:, None]
    level = np.arange(levels)[None, :]
    low, high = level * i, (level + 1) * i  # level edges times `levels`, exact integers
    low_bin, low_fraction = low // levels, (low % levels) / levels
    high_bin, high_fraction = high // levels, (high % levels) / levels
    sums = _cumulative_at(counts, hist, high_bin, high_fraction) - _cumulative_at(counts, hist, low_bin,
                                                                                    low_fraction)
    weights = (_cumulative_at(nonzeros, nonzero, high_bin, high_fraction)
               - _cumulative_at(nonzeros, nonzero, low_bin, low_fraction))
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(weights > 0, sums / np.where(weights > 0, weights, 1.0), 0.0)
        log_spread = np.log(np.where(spread > 0, spread, 1.0))
        first_whole = low_bin + (low_fraction > 0)
        inside = counts[high_bin] - counts[first_whole]  # bins wholly inside level j
        p_log_q = np.sum(inside * log_spread, axis=1)
        # split bins: bin high_bin of level j (j < levels - 1) where high_fraction > 0, shared with level j +
        # 1
        split = high_fraction[:, :-1] > 0
        shared = high_fraction[:, :-1] * spread[:, :-1] + (1 - high_fraction[:, :-1]) * spread[:, 1:]
        split_counts = np.where(split, hist[np.minimum(high_bin[:, :-1], hist.size - 1)], 0.0)
        p_log_q += np.sum(np.where(split_counts > 0, split_counts * np.log(np.where(shared > 0, shared, 1.0)),
                                   0.0),
                          axis=1)
        last = hist[candidates - 1]
        outliers = total - counts[candidates]
        p_log_q += np.where(outliers > 0, outliers * log_spread[:, -1],
                            0.0)  # bin i-1 lies inside the last level
        p_log_p = entropy_terms[candidates] - _x_log_x(last) + _x_log_x(last + outliers)
        kept = counts[candidates]
        divergences = (p_log_p - p_log_q) / total - np.log(total) + np.log(kept)
    divergences = np.where((outliers > 0) & (last == 0), np.inf, divergences)
    divergences = np.where(kept > 0, divergences, np.inf)
    return candidates, divergences


def kl_threshold_tensorrt(histogram: np.ndarray, bin_width: float) -> float:
    """The classic TensorRT clipping threshold of |x|: (m + 0.5) bin widths, m the first KL minimum."""
    candidates, divergences = kl_divergences_tensorrt(histogram)
    return float((candidates[int(np.argmin(divergences))] + 0.5) * bin_width)
