"""What a run settles on the driver before any image flows: model, processing, layout, labels, backend spec.

Shared by the pipeline (`pipeline.run`) and bench's bare in-process loop (`pipeline.bench`), so both score
exactly the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.backends import BACKENDS, BackendSpec, PrepareContext, prepare_backend
from pipeline.cache import cache_dir
from pipeline.config import DataConfig, RunConfig
from pipeline.cpu_features import CpuFeatures
from pipeline.datasets import LAYOUTS, LabelRule, Layout
from pipeline.errors import ConfigError
from pipeline.io import fs
from pipeline.io.images import open_image
from pipeline.io.manifest import ShardRef
from pipeline.models import LoadedModel, load_model
from pipeline.processing import Processing, create_processing


@dataclass(frozen=True)
class PreparedRun:
    """A run's settings resolved against its checkpoint and layout.

    Attributes:
        config: the run configuration, input and output URIs normalised.
        s3: S3 options with endpoint and region fixed on the driver (credentials stay in each node's env).
        layout: the dataset layout.
        data: the data section with the checkpoint's mask values applied.
        loaded: the checkpoint, loaded and checked.
        processing: the processing mode, built for this model.
        class_names: one name per mask class.
        label_rule: raw label pixels -> classes (None for predict).
    """

    config: RunConfig
    s3: fs.S3Options
    layout: Layout
    data: DataConfig
    loaded: LoadedModel
    processing: Processing
    class_names: tuple[str, ...]
    label_rule: LabelRule | None

    @property
    def num_classes(self) -> int:
        return self.processing.num_classes_out


def prepare_run(config: RunConfig) -> PreparedRun:
    """Load and check everything a run needs on the driver; fail before anything is written."""
    s3 = config.s3.resolved()
    config = config.replace(input=fs.normalize(config.data.input), output=fs.normalize(config.output.uri))
    layout = LAYOUTS.get(config.data.layout)
    if config.scoring and not layout.has_labels:
        raise ConfigError(f"`score` needs labels, and the {layout.name} layout has none: use `predict`, or a "
                          "layout with labels "
                          f"({', '.join(name for name, lay in LAYOUTS.items() if lay.has_labels)}).")
    entry = BACKENDS.get(config.backend.name)
    entry.check_precision(config.backend.precision)
    loaded = load_model(config.model.family, config.model.checkpoint, s3=s3, **config.model.overrides)
    processing = create_processing(
        config.processing.name, family=loaded.family, num_classes=loaded.num_classes,
        in_channels=loaded.in_channels, scale=config.processing.scale,
        input_size=config.processing.input_size, threshold=config.processing.threshold)
    num_classes = processing.num_classes_out
    class_names = config.data.class_names or layout.names_for(num_classes)
    if len(class_names) != num_classes:
        raise ConfigError(f"--class-names gives {len(class_names)} names for a {num_classes}-class model.")
    data = config.data.with_mask_values(loaded.checkpoint.metadata.get("mask_values"))
    label_rule = layout.label_rule(num_classes, data) if config.scoring else None
    return PreparedRun(config, s3, layout, data, loaded, processing, tuple(class_names), label_rule)


def sample_images_from(run: PreparedRun, shards: Iterable[ShardRef]):
    """`sample_images(n)` for backend calibration: the first n decodable images of the run, preprocessed (the
    shards may still be being listed: they are read as they come, once)."""
    from pipeline.io.source import read_shard

    def sample_images(n: int) -> list[np.ndarray]:
        images: list[np.ndarray] = []
        for ref in shards:
            for table in read_shard(ref, run.layout, run.data, False, run.s3, frozenset(), block_rows=max(n,
                                                                                                          1)):
                for data, error in zip(table.column("image").to_pylist(), table.column("error").to_pylist(),
                                       strict=True):
                    if error or data is None:
                        continue
                    try:
                        images.append(run.processing.prepare(open_image(data,
                                                                        max_pixels=run.data.max_pixels)).image)
                    except Exception:  # a bad file is the pipeline's business, not calibration's
                        continue
                    if len(images) >= n:
                        return images
        return images

    return sample_images


def with_backend(run: PreparedRun, name: str) -> PreparedRun:
    """The run with the backend that `auto` chose: what settings.json (`--resume`) and metrics.json record."""
    return dataclasses.replace(run, config=run.config.replace(backend=name))


def prepare_context(run: PreparedRun, shards: Iterable[ShardRef], cpu: CpuFeatures | None = None,
                    ) -> PrepareContext:
    """What the backend's once-per-job preparation may use: calibration images from `shards`, the cache, and
    the CPU features of the nodes the actors run on (None: this machine's)."""
    return PrepareContext(settings=run.config.backend, to_network_input=run.processing.to_network_input,
                          sample_images=sample_images_from(run, shards),
                          cache_dir=str(cache_dir() / "backends"), s3=run.s3, cpu=cpu)


def prepared_backend_spec(run: PreparedRun, shards: Iterable[ShardRef], *, threads: int,
                          cpu: CpuFeatures | None = None, **overrides: Any) -> BackendSpec:
    """The spec the inference actors build from, after the backend's once-per-job preparation on the driver
    (export, int8 calibration on the run's own images, VACC file checks). `overrides` change spec fields
    (`name`, `precision`, `options`: bench compares several backends)."""
    spec = BackendSpec.of_run(run.config, run.loaded.family.name, threads, **overrides)
    return prepare_backend(spec, prepare_context(run, shards, cpu))
