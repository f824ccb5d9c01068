"""A `pairs` layout that lists slowly, as a bucket of millions of keys does (tests only): each item after
the first few takes `DELAY` seconds to list. Its objects are pickled to the Ray workers by reference, so this
module must be importable there (`tests.pipeline.slow_listing`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.config import DataConfig
from pipeline.datasets import Item
from pipeline.datasets.files import PairedLayout
from pipeline.io import fs

DELAY = 0.05
FAST = 8  # items listed at once


@dataclass(frozen=True)
class SlowPairs(PairedLayout):
    def items(self, root: str, options: DataConfig, s3: fs.S3Options | None = None) -> Iterator[Item]:
        for position, item in enumerate(super().items(root, options, s3)):
            if position >= FAST:
                time.sleep(DELAY)
            yield item


SLOW_PAIRS = SlowPairs("slow-pairs", "pairs, listed slowly (tests)")
