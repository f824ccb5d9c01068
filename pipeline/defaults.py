"""The built-in default run: a synthetic shapes dataset (made on first use) and the packaged small checkpoint.

`unet-pipeline score` with no --input runs this, so a newcomer sees a real mIoU in well under a minute. It is
exactly the run `explicit_arguments()` names in full (printed when it starts, shown in the README): nothing of
it is hidden, so the same command typed out scores the same.
"""

from __future__ import annotations

from importlib import resources

from pipeline.cache import cache_dir
from pipeline.demo.synthetic import CLASS_NAMES, write_dataset

DATASET_VERSION = "v3"
DEFAULT_COUNT = 48
DEFAULT_FIRST_INDEX = 100_000  # pipeline.demo.train's evaluation indices, disjoint from its training data
DEFAULT_OUTPUT = "runs/default"


def default_checkpoint() -> str:
    """Packaged checkpoint path (a milesial UNet, base width 8, 4 classes, trained by pipeline.demo.train)."""
    return str(resources.files("pipeline") / "assets" / "default_milesial.pth")


def default_dataset(count: int = DEFAULT_COUNT) -> str:
    """The synthetic dataset in the `pairs` layout, written once into the cache and reused."""
    root = cache_dir() / f"shapes-{DATASET_VERSION}-{count}"
    marker = root / ".complete"
    if not marker.exists():
        write_dataset(root, count, first_index=DEFAULT_FIRST_INDEX)
        marker.write_text("ok\n")
    return str(root)


DEFAULT_RUN = {
    "layout": "pairs",
    "model": "milesial",
    "processing": "milesial-a013c80",
    "scale": 1.0,
    "class_names": CLASS_NAMES,
}


def explicit_arguments(output: str = DEFAULT_OUTPUT) -> list[str]:
    """The `unet-pipeline score` options that name the built-in default run in full."""
    args = ["-c", default_checkpoint(), "-i", default_dataset()]
    for key, value in DEFAULT_RUN.items():
        text = ",".join(value) if isinstance(value, tuple | list) else str(value)
        args += [f"--{key.replace('_', '-')}", text]
    return [*args, "-o", output]
