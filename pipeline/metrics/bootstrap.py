"""How sure is a score: percentile bootstrap intervals over images (or groups of images), in numpy only.

Every dataset score of `scores.py` is a function of three numbers per class of the summed confusion matrix:
true positives (the diagonal), ground-truth pixels (row sums) and predicted pixels (column sums). One image
therefore reduces to a (3, C) int64 row of "stats" (not its C x C matrix), stats add up exactly like matrices
do, and one resample is a vector of draw counts `w` (how often each image was drawn) whose summed stats are
`w @ stats`. A chunk of resamples is one BLAS product (k, N) @ (N, 3C) in float64, exact while every sum stays
below 2**53 (checked), so the results depend neither on BLAS, its thread count nor the chunk size.

Seeded determinism is defined by the slow loop the vectorised code must equal
(tests/metrics/test_bootstrap.py):

    rng = np.random.default_rng(seed)
    for b in range(resamples):
        drawn = rng.integers(0, num_groups, size=num_groups)  # with replacement, groups in sorted-label order
        matrix = sum of the confusion matrices of every image of every drawn group (repeats count again)
        samples[b] = scores_from_confusion(matrix)

Without groups every image is its own group, in the order of `ImageStats.ids` (sorted). The interval is the
(1 - confidence) / 2 and (1 + confidence) / 2 percentiles (numpy's linear method) of the resamples in which
the score is defined: a class drawn in no image of a resample has no IoU there, and `Interval.resamples` says
how many resamples defined it. The point estimate is `scores_from_confusion` of the summed matrix, the very
number `metrics.json` reports.

Resampling images assumes they are independent. Frames of one video sequence (CamVid) are not: resample whole
sequences with `groups_from_ids(ids, REGEX)`, or the intervals come out too narrow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.metrics.scores import scores_from_confusion

#: Rows of a stats array (..., 3, C).
TP, GROUND_TRUTH, PREDICTED = 0, 1, 2
#: The scalar scores that get an interval, named as in `SegmentationScores` / metrics.json.
SCALAR_SCORES = ("miou", "miou_all_classes", "pixel_accuracy", "mean_pixel_accuracy",
                 "mean_pixel_accuracy_all_classes", "dice")
#: Float64 sums of integers are exact below this.
_EXACT_LIMIT = 2**53


def image_stats(matrices: np.ndarray) -> np.ndarray:
    """The per-class counts every score needs, from confusion matrices.

    Args:
        matrices: (..., C, C) integer confusion matrices, rows = ground truth.

    Returns:
        (..., 3, C) int64: [TP] the diagonal, [GROUND_TRUTH] row sums, [PREDICTED] column sums.

    Example:
        >>> image_stats(np.array([[3, 1], [0, 4]])).tolist()
        [[3, 4], [4, 4], [3, 5]]
    """
    m = np.asarray(matrices, dtype=np.int64)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"Expected square confusion matrices (..., C, C), got shape {m.shape}.")
    return np.stack([np.diagonal(m, axis1=-2, axis2=-1), m.sum(-1), m.sum(-2)], axis=-2)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the non-NaN values; NaN where there are none."""
    valid = ~np.isnan(values)
    return _ratio(np.where(valid, values, 0.0).sum(-1), valid.sum(-1))


def scores_from_stats(stats: np.ndarray) -> dict[str, np.ndarray]:
    """`scores_from_confusion`'s scores for any number of stats rows at once.

    Same definitions as `pipeline.metrics.scores` (nanmean mIoU over classes present, bubbliiiing's
    all-classes mIoU, pixel accuracy, mPA both ways, foreground Dice). Equal to it up to the last bit of a
    mean over classes (numpy sums the present classes in another grouping).

    Args:
        stats: (..., 3, C) summed counts, as `image_stats` gives.

    Returns:
        Each name of `SCALAR_SCORES` -> (...) float64, and "per_class_iou" -> (..., C) float64 (NaN where a
        class occurs in neither labels nor predictions).
    """
    s = np.asarray(stats, dtype=np.float64)
    tp, gt, pred = s[..., TP, :], s[..., GROUND_TRUTH, :], s[..., PREDICTED, :]
    union = gt + pred - tp
    iou = _ratio(tp, union)
    dice = _ratio(2 * tp, gt + pred)
    total = gt.sum(-1)
    return {
        "miou": _nanmean(iou),
        "miou_all_classes": (tp / np.maximum(union, 1)).mean(-1),
        "pixel_accuracy": _ratio(tp.sum(-1), total),
        "mean_pixel_accuracy": _nanmean(_ratio(tp, gt)),
        "mean_pixel_accuracy_all_classes": (tp / np.maximum(gt, 1)).mean(-1),
        "dice": _nanmean(dice[..., 1:] if dice.shape[-1] > 1 else dice),
        "per_class_iou": iou,
    }


def image_miou(stats: np.ndarray) -> np.ndarray:
    """Per-image mean IoU over the classes present in its label or prediction (`confusion.image_scores`).

    Args:
        stats: (N, 3, C) per-image counts.

    Returns:
        (N,) float64, NaN for an image without a scored pixel.
    """
    iou = scores_from_stats(stats)["per_class_iou"]
    miou = _nanmean(iou)
    miou[np.asarray(stats)[:, GROUND_TRUTH].sum(-1) == 0] = np.nan
    return miou


@dataclass(frozen=True)
class ImageStats:
    """The per-image data a bootstrap needs: ids in sorted order, their stats, and the run's summed matrix.

    `total` is the run's own summed matrix (the one its metrics.json was scored from); the stats must add up
    to it, which catches per-image data from another attempt than the run's metrics.
    """

    ids: np.ndarray  # (N,) str (object), sorted
    stats: np.ndarray  # (N, 3, C) int64, see image_stats
    total: np.ndarray  # (C, C) int64, rows = ground truth

    def __post_init__(self) -> None:
        n = len(self.ids)
        c = self.total.shape[0] if self.total.ndim == 2 else -1
        if self.total.shape != (c, c) or self.stats.shape != (n, 3, c):
            raise ValueError(f"Expected ids (N,), stats (N, 3, C) and total (C, C), got {len(self.ids)} ids, "
                             f"stats {self.stats.shape} and total {self.total.shape}.")
        if n > 1 and not bool(np.all(self.ids[:-1] <= self.ids[1:])):
            raise ValueError("ImageStats.ids must be sorted (the resampling order is defined by id); "
                             "build it with ImageStats.from_matrices or sort ids and stats together.")
        if not np.array_equal(self.stats.sum(0), image_stats(self.total)):
            raise InputError(
                "The per-image confusion matrices do not add up to the run's summed matrix: they come from "
                "another attempt or the run's files were changed. Re-run the scoring (or --resume it) to "
                "rewrite both.")

    @property
    def num_classes(self) -> int:
        return int(self.total.shape[0])

    @classmethod
    def from_matrices(cls, ids: Sequence[str], matrices: np.ndarray) -> ImageStats:
        """From per-image (N, C, C) matrices in any order; sorts by id (stable)."""
        ids_array = np.asarray(list(ids), dtype=object)
        matrices = np.asarray(matrices, dtype=np.int64)
        order = np.argsort(ids_array, kind="stable")
        return cls(ids_array[order], image_stats(matrices)[order], matrices.sum(0))


@dataclass(frozen=True)
class BootstrapSettings:
    """How to resample. Results depend on `resamples`, `seed` and `confidence`, never on `chunk_bytes`."""

    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95
    chunk_bytes: int = 64 * 2**20  # working memory of one chunk of resamples (draws + counts)

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ConfigError(f"Expected at least 1 bootstrap resample, got {self.resamples}. Use 1000 (the "
                              "default), or skip the bootstrap to turn intervals off.")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"Expected a confidence level in (0, 1), got {self.confidence}: e.g. 0.95.")

    def to_dict(self) -> dict:
        return {"resamples": self.resamples, "seed": self.seed, "confidence": self.confidence,
                "method": "percentile bootstrap over images (groups of images with a group regex)"}


DEFAULT_SETTINGS = BootstrapSettings()


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile interval; NaN bounds when no resample defines the score."""

    estimate: float
    low: float
    high: float
    resamples: int  # resamples in which the score is defined

    def excludes(self, value: float = 0.0) -> bool:
        """Whether `value` lies outside the interval (False when the interval is undefined)."""
        return bool(self.low > value or self.high < value)

    def to_dict(self) -> dict[str, float | int | None]:
        def number(v: float) -> float | None:
            return None if np.isnan(v) else float(v)

        return {"estimate": number(self.estimate), "low": number(self.low), "high": number(self.high),
                "resamples": self.resamples}


def intervals(samples: np.ndarray, estimates: np.ndarray, confidence: float) -> list[Interval]:
    """Percentile intervals of each column of `samples` (B, M), ignoring NaN resamples."""
    samples = np.asarray(samples, dtype=np.float64).reshape(samples.shape[0], -1)
    defined = (~np.isnan(samples)).sum(0)
    tail = 100 * (1 - confidence) / 2
    bounds = np.full((2, samples.shape[1]), np.nan)
    some = defined > 0
    if some.any():
        bounds[:, some] = np.nanpercentile(samples[:, some], [tail, 100 - tail], axis=0)
    return [Interval(float(e), float(lo), float(hi), int(d))
            for e, lo, hi, d in zip(np.ravel(estimates), bounds[0], bounds[1], defined, strict=True)]


def groups_from_ids(ids: Sequence[str], pattern: str) -> np.ndarray:
    """Group number of each id, from a regex: ids with the same key share a group.

    The key is the regex's first group if it has one, else its whole match (`re.search`). Groups are numbered
    in sorted key order.

    Example:
        >>> groups_from_ids(["0006R0_f01", "0001TP_006690", "0006R0_f02"], r"^[^_]+").tolist()
        [1, 0, 1]
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"The group regex {pattern!r} is invalid ({err}); e.g. '^[^_]+' groups CamVid ids "
                          "by sequence.") from err
    keys = []
    for item_id in ids:
        match = regex.search(item_id)
        if match is None:
            raise ConfigError(f"Id {item_id!r} does not match the group regex {pattern!r}: every id needs a "
                              "group. Widen the regex (e.g. '^[^_]+' takes everything before the first '_').")
        key = match.group(1) if regex.groups else match.group(0)
        if key is None:
            raise ConfigError(f"The first group of the regex {pattern!r} takes no part in matching id "
                              f"{item_id!r}: make that group required (no '?' or '|' around it).")
        keys.append(key)
    _, number = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    return number.astype(np.int64).reshape(-1)


def _group_sums(stats: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """(G, K) summed stats per group (groups in sorted label order); the images themselves without groups."""
    flat = stats.reshape(stats.shape[0], int(np.prod(stats.shape[1:])))
    if groups is None:
        return flat
    groups = np.asarray(groups).reshape(-1)
    if groups.shape[0] != flat.shape[0]:
        raise ValueError(f"Expected one group per image ({flat.shape[0]}), got {groups.shape[0]}.")
    _, number = np.unique(groups, return_inverse=True)
    number = number.reshape(-1)
    order = np.argsort(number, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(number[order]) != 0])
    return np.add.reduceat(flat[order], starts, axis=0)


def _weights(stats: Sequence[np.ndarray], groups: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """(K, G) summed stats per group, all runs' rows stacked, in float64 when BLAS adds them exactly."""
    sums = [_group_sums(np.asarray(s, dtype=np.int64), groups) for s in stats]
    g = sums[0].shape[0]
    if any(s.shape[0] != g for s in sums):
        raise ValueError(f"Expected the same images in every stats array, got {[s.shape[0] for s in sums]}.")
    # A resample's sum is at most g x the largest group sum: below 2**53 float64 BLAS adds integers exactly.
    exact = g * max(int(np.abs(s).max(initial=0)) for s in sums) < _EXACT_LIMIT
    out = np.empty((sum(s.shape[1] for s in sums), g), np.float64 if exact else np.int64)
    row = 0
    for s in sums:
        out[row:row + s.shape[1]] = s.T
        row += s.shape[1]
    return out, exact


def resampled_sums(stats: Sequence[np.ndarray], groups: np.ndarray | None, settings: BootstrapSettings,
                   ) -> Iterator[list[np.ndarray]]:
    """The summed stats of each resample, a chunk of resamples at a time, in resample order.

    Args:
        stats: per-image integer counts of one or more runs over the same images, each (N, ...) (any trailing
            shape); every run is resampled with the same draws (a paired bootstrap).
        groups: (N,) group label per image, or None to resample images.
        settings: resamples, seed and chunk size.

    Yields:
        One (k, ...) int64 array per run: the sums of k resamples; `settings.resamples` in all.
    """
    weights, exact = _weights(stats, groups)
    g = weights.shape[1]
    if g == 0:
        raise InputError("There are no scored images to resample: score a run with labels first.")
    rng = np.random.default_rng(settings.seed)
    chunk = max(1, min(settings.resamples, settings.chunk_bytes // (16 * g)))
    counts = np.empty((chunk, g), weights.dtype)
    done = 0
    while done < settings.resamples:
        k = min(chunk, settings.resamples - done)
        drawn = rng.integers(0, g, size=(k, g))  # == k successive rng.integers(0, g, size=g) (tested)
        for row in range(k):
            counts[row] = np.bincount(drawn[row], minlength=g)
        del drawn
        # (K, g) @ (g, k): the faster orientation for OpenBLAS when k << g (scripts/bench_bootstrap.py).
        totals = (weights @ counts[:k].T).T
        if exact:
            totals = np.rint(totals).astype(np.int64)
        out, column = [], 0
        for s in stats:
            width = int(np.prod(s.shape[1:]))
            out.append(totals[:, column:column + width].reshape((k,) + s.shape[1:]))
            column += width
        yield out
        done += k


def resample_scores(stats: np.ndarray, groups: np.ndarray | None = None,
                    settings: BootstrapSettings = DEFAULT_SETTINGS) -> dict[str, np.ndarray]:
    """The bootstrap distribution of every score: name -> (B,) and "per_class_iou" -> (B, C)."""
    parts = [scores_from_stats(totals) for (totals,) in resampled_sums([stats], groups, settings)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@dataclass(frozen=True)
class BootstrapResult:
    """Intervals of every score of one run."""

    settings: BootstrapSettings
    num_images: int
    num_groups: int
    class_names: tuple[str, ...]
    scores: dict[str, Interval] = field(default_factory=dict)  # SCALAR_SCORES
    per_class_iou: tuple[Interval, ...] = ()

    def to_dict(self) -> dict:
        return {**self.settings.to_dict(), "images": self.num_images, "groups": self.num_groups,
                "scores": {name: iv.to_dict() for name, iv in self.scores.items()},
                "per_class_iou": {n: iv.to_dict()
                                  for n, iv in zip(self.class_names, self.per_class_iou, strict=True)}}


def bootstrap_scores(images: ImageStats, settings: BootstrapSettings = DEFAULT_SETTINGS,
                     groups: np.ndarray | None = None, class_names: list[str] | tuple[str, ...] | None = None,
                     ) -> BootstrapResult:
    """Percentile bootstrap intervals of every score of one run.

    Args:
        images: the run's per-image stats (id order) and summed matrix.
        settings: resamples, seed, confidence.
        groups: (N,) group label per image (`groups_from_ids`) to resample groups, or None for images.
        class_names: C names, default class_0..class_{C-1}.

    Returns:
        The point estimates of `scores_from_confusion(images.total)` with their intervals.

    Example:
        >>> images = ImageStats.from_matrices(["a", "b", "c"], np.array([[[3, 1], [0, 4]]] * 3))
        >>> bootstrap_scores(images, BootstrapSettings(resamples=50)).scores["miou"].estimate
        0.775
    """
    estimate = scores_from_confusion(images.total, class_names)
    samples = resample_scores(images.stats, groups, settings)
    return BootstrapResult(
        settings=settings, num_images=len(images.ids),
        num_groups=len(images.ids) if groups is None else len(np.unique(groups)),
        class_names=estimate.class_names,
        scores={name: intervals(samples[name][:, None], np.array([getattr(estimate, name)]),
                                settings.confidence)[0] for name in SCALAR_SCORES},
        per_class_iou=tuple(intervals(samples["per_class_iou"], estimate.per_class_iou, settings.confidence)),
    )
