"""The run configuration: one frozen dataclass that the CLI, the Ray jobs and config files all build.

It holds no secrets (S3 credentials come from the environment only), so it can be written into metrics.json and
the run history as it is.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import ConfigError
from pipeline.io.fs import S3Options
from pipeline.io.images import DEFAULT_MAX_PIXELS

FORMATS = ("parquet", "png", "both")


def parse_size(text: str | int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """`--input-size N` or `HxW` -> (H, W).

    Example:
        >>> parse_size("512"), parse_size("256x320")
        ((512, 512), (256, 320))
    """
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        return int(text[0]), int(text[1])
    if isinstance(text, int):
        return text, text
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if not match:
        raise ConfigError(f"Expected --input-size N or HxW (e.g. 512 or 256x320), got {text!r}.")
    h = int(match.group(1))
    w = int(match.group(2) or h)
    if h <= 0 or w <= 0:
        raise ConfigError(f"--input-size must be positive, got {text!r}.")
    return h, w


def parse_max_errors(text: str | int | float | None) -> float | None:
    """`--max-errors 10` (a count) or `0.05` / `5%` (a fraction of the inputs). None: no limit."""
    if text is None or text == "":
        return None
    value = str(text).strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ConfigError(f"Expected --max-errors as a count (10) or a fraction (0.05 or 5%), got {text!r}.") from None
    if number < 0:
        raise ConfigError(f"--max-errors must not be negative, got {text!r}.")
    return number


@dataclass(frozen=True)
class RunConfig:
    """Everything one scoring or prediction run needs. Field names match the CLI options."""

    command: Literal["score", "predict"] = "score"
    input: str = ""
    output: str = ""
    layout: str = "pairs"
    model: str | None = None
    checkpoint: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    # processing
    processing: str = "upstream"
    scale: float | None = None
    input_size: tuple[int, int] | None = None
    threshold: float = 0.5
    # dataset layout details
    split: str = "val"
    image_dir: str | None = None
    mask_dir: str | None = None
    mask_suffix: str | None = None
    image_column: str | None = None
    mask_column: str | None = None
    id_column: str | None = None
    label_values: tuple[int, ...] | None = None
    limit: int | None = None
    class_names: tuple[str, ...] | None = None
    # outputs
    format: str = "parquet"
    # execution
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 4
    shard_size: int = 32
    concurrency: int | None = None
    num_cpus_per_actor: float | None = None  # None: share the CPUs the tasks leave among the actors
    threads_per_actor: int | None = None
    num_cpus_per_task: float = 0.5
    backend_options: dict[str, Any] = field(default_factory=dict)
    # backend preparation (once per job, on the driver): int8 calibration, VACC model files
    calibration: str = "entropy"
    calibration_images: int = 32
    vacc_model: str | None = None
    actors_per_die: int = 1
    # robustness
    max_errors: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    resume: bool = False
    # scheduled runs (pipeline.history): run-id output prefix, history file, regression gate
    run_id: str | None = None
    history: str | None = None
    baseline: str | None = None  # a run id in `history`, or "last-good"
    max_drop: float = 0.01  # the gate fails when mIoU falls more than this (absolute) below the baseline
    # environment
    s3: S3Options = field(default_factory=S3Options)
    ray_address: str | None = None
    progress: bool | None = None  # None: on a terminal, off in CI
    report: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"Expected --format parquet, png or both, got {self.format!r}.")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ConfigError("--batch-size and --shard-size must be at least 1.")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1.")
        if not self.input:
            raise ConfigError("--input is required: a local folder or s3://bucket/prefix.")
        if not self.output:
            raise ConfigError("--output is required: a local folder or s3://bucket/prefix.")
        if not self.checkpoint:
            raise ConfigError("--checkpoint is required: a local path or s3:// URI of the model weights.")
        if self.baseline and not self.history:
            raise ConfigError("--baseline needs --history FILE: the baseline run is looked up in that history.")
        if self.baseline and self.command != "score":
            raise ConfigError("--baseline gates on mIoU, which only `score` measures: drop it for `predict`.")
        if not 0 <= self.max_drop <= 1:
            raise ConfigError(f"--max-drop is an absolute mIoU drop between 0 and 1 (e.g. 0.02), got {self.max_drop}.")

    @property
    def formats(self) -> tuple[str, ...]:
        return ("parquet", "png") if self.format == "both" else (self.format,)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; safe to log (no credentials are ever part of the config)."""
        out = dataclasses.asdict(self)
        out["input_size"] = list(self.input_size) if self.input_size else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown run configuration keys {unknown}; valid keys: {sorted(known)}.")
        data = dict(data)
        if isinstance(data.get("s3"), dict):
            data["s3"] = S3Options(**data["s3"])
        if data.get("input_size") is not None:
            data["input_size"] = parse_size(data["input_size"])
        for key in ("label_values", "class_names"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if "max_errors" in data:
            data["max_errors"] = parse_max_errors(data["max_errors"])
        return cls(**data)
