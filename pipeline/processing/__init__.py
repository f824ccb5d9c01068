"""Pre/post-processing modes: each model family's upstream predict path, bit for bit, plus two generic ones.

Use (one image at a time, numpy in and out):

    proc = create_processing("upstream", family=MODELS.get("milesial"), num_classes=2, in_channels=3)
    prepared = proc.prepare(pil_image)                        # CPU task: .image (h, w, c) uint8, .meta dict
    x = proc.to_network_input(prepared.image[None])           # (1, c, h, w) float32, exactly x / 255
    classes = proc.finish(network(x)[0], prepared.meta)       # actor: (H', W') uint8 class indices
    label = proc.prepare_label(label, prepared.meta)          # scoring: label at the masks' resolution
    png = proc.upstream_png(classes)                          # the file upstream's predict script writes

Modes (`PROCESSINGS`): "upstream" (the family's own), "milesial-a013c80", "milesial-21d7850", "bubbliiiing",
"zhixuhao", "resize", "model-res". Each module's docstring states its steps and the decisions taken where
upstream crashes or is ambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.processing.base import Prepared, Processing, to_network_input
from pipeline.processing.bubbliiiing import BubbliiiingProcessing, letterbox_geometry
from pipeline.processing.fixed_size import ModelResProcessing, ResizeProcessing, ZhixuhaoProcessing
from pipeline.processing.milesial import MilesialHeadProcessing, MilesialPinnedProcessing
from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.models import ModelFamily


@dataclass(frozen=True)
class ProcessingMode:
    """One `--processing` choice: its class, or None for "upstream" (resolved per model family)."""

    name: str
    description: str
    cls: type[Processing] | None


UPSTREAM = "upstream"

PROCESSINGS: Registry[ProcessingMode] = Registry("processing")
PROCESSINGS.register(UPSTREAM, ProcessingMode(
    UPSTREAM, "The model family's own predict path (milesial: milesial-a013c80; bubbliiiing-*: bubbliiiing; "
              "zhixuhao: zhixuhao).", None))
for _cls in (MilesialPinnedProcessing, MilesialHeadProcessing, BubbliiiingProcessing, ZhixuhaoProcessing,
             ResizeProcessing, ModelResProcessing):
    PROCESSINGS.register(_cls.name, ProcessingMode(_cls.name, _cls.description, _cls))


def create_processing(name: str, *, family: ModelFamily, num_classes: int, in_channels: int,
                      scale: float | None = None, input_size: Sequence[int] | int | None = None,
                      threshold: float = 0.5) -> Processing:
    """Build a processing mode for one model.

    Args:
        name: a `PROCESSINGS` name; "upstream" means `family.default_processing`.
        family: the model family (uses name, default_processing, default_input_size, input_divisor,
            output_kind).
        num_classes: channels of the network output.
        in_channels: channels of the network input.
        scale: milesial modes: resize factor (default 0.5). Other modes reject it.
        input_size: fixed-size modes: network input (H, W), or N for N x N (default: the mode's or the
            family's). The milesial modes reject it.
        threshold: probability threshold for single-channel outputs.

    Raises:
        UnknownNameError: unknown mode name (lists the valid ones).
        ConfigError: an option the mode does not take, or a value the model cannot use.
    """
    mode = PROCESSINGS.get(name.strip().lower())
    if mode.cls is None:
        mode = PROCESSINGS.get(family.default_processing)
    if mode.cls is None:
        raise ConfigError(f"The {family.name} model family names no processing of its own: pass --processing "
                          f"with one of {', '.join(PROCESSINGS.names()[1:])}.")
    size: tuple[int, int] | None
    if input_size is None:
        size = None
    elif isinstance(input_size, int):
        size = (input_size, input_size)
    else:
        size = tuple(input_size)  # type: ignore[assignment]
    return mode.cls.create(family=family, num_classes=num_classes, in_channels=in_channels, scale=scale,
                           input_size=size, threshold=threshold)


__all__ = [
    "PROCESSINGS", "Prepared", "Processing", "ProcessingMode", "create_processing", "letterbox_geometry",
    "to_network_input", "BubbliiiingProcessing", "MilesialHeadProcessing",
    "MilesialPinnedProcessing", "ModelResProcessing", "ResizeProcessing", "ZhixuhaoProcessing",
]
