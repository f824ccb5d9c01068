"""Paired comparison of two runs over the same images: what changed beyond the noise of the sample.

Both runs are resampled with the same draws (`bootstrap.resampled_sums` of both runs' stats at once), so the
interval of a difference reflects how the *difference* varies across samples of the data, which is much
narrower than two separate intervals when both runs find the same images hard. Differences are B - A (A is the
baseline). A score "changed" when its paired interval excludes 0; a run compared with itself has every
difference 0 in every resample, so nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.metrics.bootstrap import (
    DEFAULT_SETTINGS,
    SCALAR_SCORES,
    BootstrapSettings,
    ImageStats,
    Interval,
    image_miou,
    intervals,
    resampled_sums,
    scores_from_stats,
)
from pipeline.metrics.scores import scores_from_confusion

SHOWN_IDS = 5  # ids named in a mismatch error


@dataclass(frozen=True)
class ScoreChange:
    """One score in both runs and its paired difference (B - A)."""

    name: str
    a: float
    b: float
    difference: Interval

    @property
    def changed(self) -> bool:
        """The paired interval of the difference excludes 0."""
        return self.difference.excludes(0.0)

    def to_dict(self) -> dict:
        def number(v: float) -> float | None:
            return None if np.isnan(v) else float(v)

        return {"a": number(self.a), "b": number(self.b), "difference": self.difference.to_dict(),
                "changed": self.changed}


@dataclass(frozen=True)
class ImageChange:
    """One image's per-image mIoU in both runs; `index` is its position in id order (ImageStats.ids)."""

    id: str
    index: int
    iou_a: float
    iou_b: float

    @property
    def delta(self) -> float:
        return self.iou_b - self.iou_a


@dataclass(frozen=True)
class Comparison:
    """Paired differences of every score, the classes whose IoU changed, and the images that changed most."""

    settings: BootstrapSettings
    num_images: int
    num_groups: int
    class_names: tuple[str, ...]
    scores: dict[str, ScoreChange]  # SCALAR_SCORES
    per_class_iou: tuple[ScoreChange, ...]
    images: tuple[ImageChange, ...]  # largest |delta| first, ties by id
    num_images_ranked: int  # images with a per-image IoU in both runs

    @property
    def changed_classes(self) -> tuple[str, ...]:
        """Classes whose paired IoU interval excludes 0, in class order."""
        return tuple(change.name for change in self.per_class_iou if change.changed)

    def to_dict(self) -> dict:
        return {**self.settings.to_dict(), "images": self.num_images, "groups": self.num_groups,
                "difference": "B - A",
                "scores": {name: change.to_dict() for name, change in self.scores.items()},
                "per_class_iou": {change.name: change.to_dict() for change in self.per_class_iou},
                "changed_classes": list(self.changed_classes),
                "images_ranked": self.num_images_ranked,
                "images_changed_most": [{"id": c.id, "iou_a": c.iou_a, "iou_b": c.iou_b, "delta": c.delta}
                                        for c in self.images]}


def check_same_images(ids_a: np.ndarray, ids_b: np.ndarray) -> None:
    """Refuse two runs unless they scored exactly the same ids, each once.

    Raises:
        ConfigError: naming the first ids found in only one run, or the first repeated id.
    """
    for name, ids in (("A", ids_a), ("B", ids_b)):
        repeated = ids[1:][ids[1:] == ids[:-1]]
        if repeated.size:
            raise ConfigError(f"Run {name} holds id {repeated[0]!r} more than once, so its images cannot be "
                              "paired with another run's: give each input a unique id.")
    if len(ids_a) == len(ids_b) and bool(np.all(ids_a == ids_b)):
        return
    only_a = np.setdiff1d(ids_a, ids_b, assume_unique=True)[:SHOWN_IDS]
    only_b = np.setdiff1d(ids_b, ids_a, assume_unique=True)[:SHOWN_IDS]
    listed = "; ".join(f"only in {name}: {', '.join(map(repr, ids))}"
                       for name, ids in (("A", only_a), ("B", only_b)) if len(ids))
    raise ConfigError(
        f"The runs scored different images ({len(ids_a)} in A, {len(ids_b)} in B; {listed}). A paired "
        "comparison needs the same inputs: re-run one of them over the other's input (same --input and "
        "--limit), or --resume the incomplete one.")


def compare_runs(a: ImageStats, b: ImageStats, settings: BootstrapSettings = DEFAULT_SETTINGS,
                 groups: np.ndarray | None = None, class_names: list[str] | tuple[str, ...] | None = None,
                 top_images: int = 20) -> Comparison:
    """Paired bootstrap of B - A for every score, with the same resampled images applied to both runs.

    Args:
        a: the baseline run's per-image stats (id order).
        b: the other run's, over the same ids.
        settings: resamples, seed, confidence.
        groups: (N,) group label per image to resample groups, or None.
        class_names: C names, default class_0..class_{C-1}.
        top_images: how many images with the largest per-image mIoU change to list.

    Raises:
        ConfigError: the runs scored different ids or a different number of classes.
    """
    check_same_images(a.ids, b.ids)
    if a.num_classes != b.num_classes:
        raise ConfigError(f"Run A has {a.num_classes} classes and run B {b.num_classes}: only runs of models "
                          "with the same classes can be compared.")
    est_a, est_b = scores_from_confusion(a.total, class_names), scores_from_confusion(b.total, class_names)
    diffs: dict[str, list[np.ndarray]] = {}
    for totals_a, totals_b in resampled_sums([a.stats, b.stats], groups, settings):
        sa, sb = scores_from_stats(totals_a), scores_from_stats(totals_b)
        for name in (*SCALAR_SCORES, "per_class_iou"):
            diffs.setdefault(name, []).append(sb[name] - sa[name])
    samples = {name: np.concatenate(parts) for name, parts in diffs.items()}

    def change(name: str, value_a: float, value_b: float, interval: Interval) -> ScoreChange:
        return ScoreChange(name, float(value_a), float(value_b), interval)

    scores = {}
    for name in SCALAR_SCORES:
        va, vb = getattr(est_a, name), getattr(est_b, name)
        scores[name] = change(name, va, vb, intervals(samples[name][:, None], np.array([vb - va]),
                                                      settings.confidence)[0])
    class_intervals = intervals(samples["per_class_iou"], est_b.per_class_iou - est_a.per_class_iou,
                                settings.confidence)
    per_class = tuple(change(n, va, vb, iv) for n, va, vb, iv in
                      zip(est_a.class_names, est_a.per_class_iou, est_b.per_class_iou, class_intervals,
                          strict=True))
    ranked, num_ranked = rank_image_changes(a, b, top_images)
    return Comparison(settings, len(a.ids), len(a.ids) if groups is None else len(np.unique(groups)),
                      est_a.class_names, scores, per_class, ranked, num_ranked)


def rank_image_changes(a: ImageStats, b: ImageStats, top: int) -> tuple[tuple[ImageChange, ...], int]:
    """The `top` images whose per-image mIoU changed most (largest |B - A| first, ties by id).

    Returns:
        Those images, and how many images have a per-image mIoU in both runs.
    """
    iou_a, iou_b = image_miou(a.stats), image_miou(b.stats)
    delta = iou_b - iou_a
    index = np.flatnonzero(~np.isnan(delta))
    order = index[np.lexsort((index, -np.abs(delta[index])))][:top]  # ids are sorted: ties in id order
    return (tuple(ImageChange(str(a.ids[i]), int(i), float(iou_a[i]), float(iou_b[i])) for i in order),
            int(index.size))
