"""Exact mask comparison that tells float noise from real differences.

A mask computed here and the upstream mask in tests/fixtures/reference/ must agree on every pixel whose
decision the reference makes with a margin above float noise; a pixel whose reference margin is within noise
may flip (another CPU, thread count or oneDNN kernel moves logits by ~1e-6). Such flips are counted, printed
with their margins, and allowed up to a handful per image; any other difference fails.

    comparison = compare_masks(got, expected, margin, tolerance=LOGIT_NOISE, unit="logit", what="img0 head")
    comparison.check()          # prints the report; fails on a mismatch or on too many near-tie flips

`margin` is the reference's decision margin at each pixel, where the decision is taken:
* `score_margin` for an arg-max (top-2 gap) or threshold (distance to it) of logits or probabilities;
* `pinned_margin` for milesial a013c80, whose arg-max is taken on 8-bit PIL-resized probabilities: the
  decision is exact integer arithmetic once the bytes are fixed, so the float-noise margin is how far each
  probability in the pixel's resize footprint is from changing its byte (x * 255 truncated).
  `compare_pinned_masks` then checks that each flip within that margin is really reachable by moving those
  bytes (otherwise it is a mismatch).

Tolerances (the noise a pixel's reference margin must exceed to be compared exactly):
* LOGIT_NOISE = 2e-5: logits computed here differ from the fixtures by at most 3.4e-6 (milesial <= 2.1e-6,
  bubbliiiing <= 3.4e-6 in the stored centre; 1 or 2 torch threads, OMP_NUM_THREADS=1; the model tests assert
  < 1e-4); a top-2 gap moves by at most twice that (6.8e-6), so 2e-5 leaves a factor ~3 for other CPUs'
  kernels (AVX-512/AMX oneDNN) and the float32 rounding of the bilinear resize (~1e-7 of the values).
* PROBABILITY_NOISE = 1e-5: a softmax moves a top-2 probability gap by at most half the logit gap's change
  (d(p1 - p0) <= |d(l1 - l0)| / 2: <= 1e-5 for the logit tolerance above; one probability of a 2-class softmax
  moves by at most a quarter of it); OpenCV's bilinear (upstream bubbliiiing) and torch's differ by ~1e-6;
  float32 softmax rounding is ~1e-7. The flips seen have margins <= 4e-7.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image

# the rule `--backend auto`'s probe uses too, owned by the pipeline
from pipeline.metrics.ties import LOGIT_NOISE as LOGIT_NOISE
from pipeline.metrics.ties import score_margin as score_margin

PROBABILITY_NOISE = 1e-5
MAX_NEAR_TIES = 5  # per image ("a handful"): 0 seen here, 2 on an AVX-512/AMX CPU, <= 5 with +-3e-6 noise
MAX_TOGGLED_BYTES = 12  # pinned path: at most 2**12 byte combinations tried per flipped pixel


@dataclass(frozen=True)
class Flip:
    """One pixel where the mask differs from the reference, with the reference's decision margin there."""

    y: int
    x: int
    expected: int
    got: int
    margin: float

    def __str__(self) -> str:
        return f"(y={self.y}, x={self.x}) expected {self.expected}, got {self.got}, margin {self.margin:.3g}"


@dataclass(frozen=True)
class MaskComparison:
    """The pixels of a mask that differ from the reference, split by the reference's margin there.

    Attributes:
        what: a label for the report (image, path, options).
        unit: what the margins measure ("logit", "probability").
        tolerance: margins at or below this are float noise.
        pixels: pixels compared.
        within_noise: pixels (equal or not) whose reference margin is at or below the tolerance.
        near_ties: differing pixels whose margin is within noise (allowed, up to a handful).
        mismatches: differing pixels whose margin is above noise (never allowed).
    """

    what: str
    unit: str
    tolerance: float
    pixels: int
    within_noise: int
    near_ties: tuple[Flip, ...]
    mismatches: tuple[Flip, ...]

    @property
    def exact(self) -> bool:
        return not self.near_ties and not self.mismatches

    def report(self) -> str:
        summary = (f"{self.what}: {self.pixels} pixels, {self.within_noise} with a reference {self.unit} "
                   f"margin <= {self.tolerance:g}; {len(self.near_ties)} near-tie flip(s), "
                   f"{len(self.mismatches)} mismatch(es)")
        lines = [summary]
        lines += [f"  near tie {flip}" for flip in self.near_ties]
        lines += [f"  MISMATCH {flip}" for flip in self.mismatches[:20]]
        if len(self.mismatches) > 20:
            lines.append(f"  ... and {len(self.mismatches) - 20} more mismatches")
        return "\n".join(lines)

    def check(self, max_near_ties: int = MAX_NEAR_TIES) -> None:
        """Print the report; fail on any mismatch, or on more near-tie flips than `max_near_ties`."""
        text = self.report()
        print(text)
        assert not self.mismatches, f"pixels that differ with a margin above float noise:\n{text}"
        assert len(self.near_ties) <= max_near_ties, f"more than {max_near_ties} near-tie flips:\n{text}"


def compare_masks(got: np.ndarray, expected: np.ndarray, margin: np.ndarray, *, tolerance: float, unit: str,
                  what: str = "mask") -> MaskComparison:
    """Compare two (H, W) class masks; `margin` (H, W) is the reference's decision margin at each pixel."""
    got, expected, margin = np.asarray(got), np.asarray(expected), np.asarray(margin, dtype=np.float64)
    assert got.shape == expected.shape == margin.shape, (got.shape, expected.shape, margin.shape)
    flips = [Flip(int(y), int(x), int(expected[y, x]), int(got[y, x]), float(margin[y, x]))
             for y, x in zip(*np.nonzero(got != expected), strict=True)]
    return MaskComparison(
        what=what, unit=unit, tolerance=tolerance, pixels=int(got.size),
        within_noise=int((margin <= tolerance).sum()),
        near_ties=tuple(f for f in flips if f.margin <= tolerance),
        mismatches=tuple(f for f in flips if f.margin > tolerance))


# ------------------------------------------------------------------ milesial a013c80: 8-bit probabilities,
# PIL

def quantise(probabilities: np.ndarray) -> np.ndarray:
    """torchvision ToPILImage on float input: float32(p * 255) truncated to uint8. (C, h, w) -> (C, h, w)."""
    return (np.asarray(probabilities, dtype=np.float32) * np.float32(255)).astype(np.uint8)


def byte_distance(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far each probability is from changing its byte, and which byte it would become.

    Returns (distance in probability units, the neighbouring byte value). A probability can only move within
    [0, 1]: 0 bytes cannot go down and 255 (p == 1) cannot go up.
    """
    x = np.asarray(probabilities, dtype=np.float32).astype(np.float64) * 255
    byte = quantise(probabilities).astype(np.int64)
    down = np.where(byte >= 1, x - byte, np.inf)  # to the boundary at `byte` from above
    up = np.where(byte <= 254, byte + 1 - x, np.inf)  # to the boundary at `byte + 1` from below
    distance = np.minimum(down, up) / 255
    other = np.where(down <= up, byte - 1, byte + 1)
    return distance, other


def _footprint(src: int, dst: int) -> list[range]:
    """The source indices PIL's bilinear filter reads per destination index (a superset: edge weights 0)."""
    if src == dst:
        return [range(i, i + 1) for i in range(dst)]  # PIL copies an image resized to its own size
    scale = src / dst
    support = max(scale, 1.0)
    out = []
    for i in range(dst):
        center = (i + 0.5) * scale
        out.append(range(max(int(center - support + 0.5), 0), min(int(center + support + 0.5), src)))
    return out


def pinned_margin(probabilities: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) reference probabilities -> (H, W): the smallest probability change, over the channels and the
    source pixels PIL's bilinear resize reads for each output pixel, that changes one of their bytes."""
    distance = byte_distance(probabilities)[0].min(axis=0)  # (h, w)
    rows = _footprint(distance.shape[0], size_hw[0])
    cols = _footprint(distance.shape[1], size_hw[1])
    by_row = np.stack([distance[r.start:r.stop].min(axis=0) for r in rows])  # (H, w)
    return np.stack([by_row[:, c.start:c.stop].min(axis=1) for c in cols], axis=1)  # (H, W)


def pil_decision(quantised: np.ndarray, size_hw: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """a013c80's decision from (C, h, w) bytes: PIL BILINEAR in ToPILImage's mode, then arg-max (first index
    on ties) or byte / 255 > threshold for one channel. More than 4 channels: one 'L' image per channel."""
    count = quantised.shape[0]
    size_wh = (size_hw[1], size_hw[0])
    if count > 4:
        resized = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize(size_wh,
                                                                                       Image.BILINEAR))
                            for c in quantised])
    else:
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[count]
        hwc = np.ascontiguousarray(quantised.transpose(1, 2, 0))
        image = Image.frombytes(mode, (hwc.shape[1], hwc.shape[0]), hwc.tobytes()).resize(size_wh,
                                                                                          Image.BILINEAR)
        resized = np.asarray(image).reshape(size_hw[0], size_hw[1], count).transpose(2, 0, 1)
    if count == 1:
        return (resized[0].astype(np.float32) / np.float32(255) > np.float32(threshold)).astype(np.uint8)
    return np.argmax(resized, axis=0).astype(np.uint8)


def compare_pinned_masks(got: np.ndarray, expected: np.ndarray, probabilities: np.ndarray, *,
                         threshold: float = 0.5, tolerance: float = PROBABILITY_NOISE,
                         what: str = "mask") -> MaskComparison:
    """`compare_masks` for milesial a013c80, from the reference's (C, h, w) probabilities.

    A flip counts as a near tie only if moving some of the bytes within `tolerance` of a byte boundary, in
    that pixel's resize footprint, gives the flipped class; otherwise it is a mismatch, whatever its margin.
    """
    size_hw = tuple(np.shape(expected))
    comparison = compare_masks(got, expected, pinned_margin(probabilities, size_hw), tolerance=tolerance,
                               unit="probability (to a byte boundary)", what=what)
    reachable = [f for f in comparison.near_ties if _reachable(f, probabilities, size_hw, threshold,
                                                               tolerance)]
    unreachable = [f for f in comparison.near_ties if f not in reachable]
    return MaskComparison(comparison.what, comparison.unit, comparison.tolerance, comparison.pixels,
                          comparison.within_noise, tuple(reachable),
                          comparison.mismatches + tuple(unreachable))


def _reachable(flip: Flip, probabilities: np.ndarray, size_hw: tuple[int, int], threshold: float,
               tolerance: float) -> bool:
    """Whether toggling fragile bytes of the flip's footprint (each to its neighbour) gives `flip.got`."""
    base = quantise(probabilities)
    distance, other = byte_distance(probabilities)
    rows = _footprint(base.shape[1], size_hw[0])[flip.y]
    cols = _footprint(base.shape[2], size_hw[1])[flip.x]
    fragile = [(c, r, k) for c in range(base.shape[0]) for r in rows for k in cols
               if distance[c, r, k] <= tolerance]
    assert len(fragile) <= MAX_TOGGLED_BYTES, f"{len(fragile)} fragile bytes around {flip}: widen the search"

    def decide(q: np.ndarray) -> int:
        return int(pil_decision(q, size_hw, threshold)[flip.y, flip.x])

    for count in range(1, len(fragile) + 1):
        for subset in itertools.combinations(fragile, count):
            trial = base.copy()
            for c, r, k in subset:
                trial[c, r, k] = other[c, r, k]
            if decide(trial) == flip.got:
                return True
    return False
