"""The dataset layouts the pipeline reads, by name (`--layout NAME`)."""

from __future__ import annotations

from pipeline.datasets.base import Item, LabelRule, Layout
from pipeline.datasets.containers import CONTAINER_LAYOUTS, ContainerLayout, Sample
from pipeline.datasets.files import FILE_LAYOUTS, VOC_CLASSES
from pipeline.io.images import IGNORE_INDEX
from pipeline.registry import Registry

LAYOUTS: Registry[Layout] = Registry("layout")
for _layout in FILE_LAYOUTS + CONTAINER_LAYOUTS:
    LAYOUTS.register(_layout.name, _layout)

__all__ = [
    "IGNORE_INDEX", "LAYOUTS", "ContainerLayout", "Item", "LabelRule", "Layout", "Sample",
    "VOC_CLASSES",
]
