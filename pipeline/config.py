"""The run configuration: one frozen `RunConfig` of typed sections that the CLI, jobs and config files build.

Each section is handed to the layer that uses it (`data` to the dataset layouts, `backend` to the backend
registry, `output` to the sink, ...), so nothing copies settings by hand. Every field says, in its metadata,

* `result`: whether it changes masks or metrics. What `--resume` refuses to change and what the run-id hash
  covers are derived from these marks (`RunConfig.result_settings`), never from hand-kept lists;
* `help`: the CLI help text (the click options are generated from the fields, defaults included);
* `key`: the flat name used on the command line, in config files and in metrics.json (`backend`,
  `backend_options`, ...) when it differs from the field name.

The flat names are unique across sections, so a config file or `RunConfig.from_dict` takes either flat keys
(`{"input": ..., "batch_size": 8}`) or sections (`{"data": {"input": ...}}`). The configuration holds no
secrets (S3 credentials come from the environment only), so it is written into metrics.json and the run
history as is.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, TypeVar

from pipeline.errors import ConfigError
from pipeline.io.fs import S3Options
from pipeline.io.images import DEFAULT_MAX_PIXELS
from pipeline.labels import IgnoreIndex, parse_ignore_index, parse_label_map
from pipeline.quantize.methods import DEFAULT as DEFAULT_CALIBRATION
from pipeline.quantize.methods import get_method
from pipeline.sizes import parse_size

FORMATS = ("parquet", "png", "both")
PNG_VALUES = ("classes", "upstream")
GATES = ("plain", "significant")
SectionT = TypeVar("SectionT")
_LABELLED = ("score", "bench")  # the commands that read labels
COMMANDS = ("score", "predict")
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {"predict": {"layout": "folder"}}
"""Defaults that differ by command (the CLI and the Python API both apply them): predict reads bare images."""


def setting(default: Any = MISSING, *, result: bool, help: str, key: str | None = None,
            convert: Callable[[Any], Any] | None = None, factory: Callable[[], Any] | None = None,
            commands: tuple[str, ...] | None = None) -> Any:
    """A configuration field: default, whether it changes results, help, flat key and input converter.

    `commands`: the commands it does something for (`score`, `predict`, `bench`); None: every one. The CLI
    offers an option only on those commands.
    """
    metadata = {"result": result, "help": help, "key": key, "convert": convert, "commands": commands}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_max_errors(text: str | int | float | None) -> float | None:
    """`--max-errors 10` (a count) or `0.05` / `5%` (a fraction of the inputs). None: no limit.

    Example:
        >>> parse_max_errors("5%"), parse_max_errors(10)
        (0.05, 10.0)
    """
    if text is None or text == "":
        return None
    value = str(text).strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ConfigError("Expected --max-errors as a count (10) or a fraction (0.05 or 5%), got "
                          f"{text!r}.") from None
    if number < 0:
        raise ConfigError(f"--max-errors must not be negative, got {text!r}.")
    return number


def _int_tuple(value: Any) -> tuple[int, ...] | None:
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(int(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise ConfigError(f"Expected integers separated by commas (e.g. 0,255), got {value!r}.") from None


def _str_tuple(value: Any) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(v).strip() for v in items if str(v).strip()) or None


@dataclass(frozen=True)
class DataConfig:
    """The dataset: where it is, its layout, and the layout's details."""

    input: str = setting("", result=True, help="Dataset: local folder or s3://bucket/prefix.")
    layout: str = setting("pairs", result=True, help="Dataset layout (`unet-pipeline layouts`).")
    split: str = setting("val", result=True, help="voc: ImageSets/Segmentation/<split>.txt.")
    image_dir: str | None = setting(None, result=True,
                                    help="pairs/carvana/isbi: image folder name under --input.")
    mask_dir: str | None = setting(None, result=True, commands=_LABELLED,
                                   help="pairs/carvana/isbi: label folder name under --input.")
    mask_suffix: str | None = setting(None, result=True, commands=_LABELLED,
                                      help="pairs/carvana/isbi: label file = <stem><suffix> (e.g. "
                                           "_mask.gif).")
    image_column: str | None = setting(None, result=True, help="parquet: column of image bytes.")
    mask_column: str | None = setting(None, result=True, commands=_LABELLED,
                                      help="parquet: column of mask bytes.")
    id_column: str | None = setting(None, result=True, help="parquet: column of ids.")
    label_values: tuple[int, ...] | None = setting(
        None, result=True, convert=_int_tuple,
        help="Raw label value of each class, comma separated (e.g. 0,255).")
    class_names: tuple[str, ...] | None = setting(
        None, result=True, convert=_str_tuple, help="Class names, comma separated, in class-index order.")
    ignore_index: IgnoreIndex = setting(
        None, result=True, convert=parse_ignore_index,
        help="Label value that is not scored (after --label-map): N, or `none` to score every value "
             "[default: the layout's, 255 for pairs, voc, parquet, webdataset].")
    label_map: str | None = setting(
        None, result=True, convert=parse_label_map,
        help="Raw label value -> class: RAW:CLASS pairs (0:0,255:1; CLASS `ignore` = not scored), a file of "
             "such pairs (or JSON), or reduce_zero_label (0 ignored, v -> v-1).")
    limit: int | None = setting(None, result=True,
                                help="Only the first N inputs (file layouts), e.g. for a smoke run.")
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, result=True,
                              help="Larger images are refused as decompression bombs.")

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}.")

    def with_mask_values(self, mask_values: Any) -> DataConfig:
        """The section with the checkpoint's `mask_values` applied: for the pairs layout without
        --label-values, milesial checkpoints that record integer mask values (HEAD checkpoints: the raw mask
        value of each class)
        map those raw values to classes."""
        if (self.label_values is None and self.label_map is None and self.layout == "pairs" and mask_values
                and all(isinstance(v, int) for v in mask_values)):
            return dataclasses.replace(self, label_values=tuple(mask_values))
        return self


@dataclass(frozen=True)
class ModelConfig:
    """The model: its family and weights."""

    family: str | None = setting(None, result=True, key="model",
                                 help="Model family (`unet-pipeline models`); inferred from the checkpoint "
                                      "if omitted.")
    checkpoint: str = setting("", result=True,
                              help="Weights: local path or s3:// URI (.pth/.pt, .safetensors, Keras .hdf5).")
    overrides: dict[str, Any] = setting(result=True, key="model_config", factory=dict,
                                        help="Model config overrides (num_classes, in_channels, bilinear, "
                                             "...).")


@dataclass(frozen=True)
class ProcessingConfig:
    """Pre/post-processing (`unet-pipeline processings`)."""

    name: str = setting("upstream", result=True, key="processing",
                        help="Pre/post-processing (`unet-pipeline processings`); upstream = the family's "
                             "own.")
    scale: float | None = setting(None, result=True,
                                  help="milesial: input resize factor (upstream default 0.5).")
    input_size: tuple[int, int] | None = setting(
        None, result=True, convert=parse_size,
        help="Network input size N or HxW (bubbliiiing, zhixuhao, resize, model-res).")
    threshold: float = setting(0.5, result=True, help="Probability threshold for single-channel outputs.")


@dataclass(frozen=True)
class BackendConfig:
    """The inference backend and what its once-per-job preparation needs."""

    name: str = setting("auto", result=True, key="backend",
                        help="Inference backend (auto, torch, onnx, vacc, or package.module:ENTRY); auto: "
                             "ONNX Runtime on the CPU where it gives torch's masks, else torch.")
    device: str = setting("cpu", result=False, help="torch: cpu or cuda.")
    precision: str = setting("fp32", result=True, help="Numeric precision of the backend.")
    options: dict[str, Any] = setting(result=True, key="backend_options", factory=dict,
                                      help="Backend-specific settings (config files), e.g. {channels_last: "
                                           "0}.")
    calibration: str = setting(DEFAULT_CALIBRATION, result=True,
                               help="int8: activation range calibration: kl_pytorch_quantization (alias "
                                    "entropy, NVIDIA pytorch-quantization's KL search), kl_tensorrt (classic "
                                    "TensorRT KL), percentile (99.99%) or minmax.")
    calibration_images: int = setting(32, result=True,
                                      help="int8: images of the dataset used for calibration (once per job, "
                                           "cached).")
    vacc_model: str | None = setting(None, result=True,
                                     help="vacc: prefix of the compiled model files "
                                          "(<prefix>.so/.json/.params).")
    actors_per_die: int = setting(1, result=False, help="vacc: inference actors sharing one VACC die.")

    def __post_init__(self) -> None:
        get_method(self.calibration)  # an unknown method is refused with the closest name
        if self.calibration_images < 1:
            raise ConfigError(f"--calibration-images must be at least 1, got {self.calibration_images}.")
        if self.actors_per_die < 1:
            raise ConfigError(f"--actors-per-die must be at least 1, got {self.actors_per_die}.")


@dataclass(frozen=True)
class ExecutionConfig:
    """How the run is spread over the cluster, and how it copes with failures."""

    batch_size: int = setting(4, result=False, help="Images per forward call.")
    shard_size: int = setting(32, result=False,
                              help="Images per shard (the unit of reading, committing and resuming).")
    concurrency: int | None = setting(None, result=False,
                                      help="Inference actors (default: as many as the CPUs or devices "
                                           "allow).")
    num_cpus_per_actor: float | None = setting(
        None, result=False,
        help="Ray CPUs each inference actor requests (default: CPU backends get one actor per CPU, sharing "
             "what the tasks leave).")
    threads_per_actor: int | None = setting(None, result=False,
                                            help="Intra-op threads per actor (default: its CPUs).")
    num_cpus_per_task: float = setting(0.5, result=False, help="Ray CPUs of each read/preprocess/write task.")
    max_errors: float | None = setting(
        None, result=False, convert=parse_max_errors, commands=COMMANDS,
        help="Fail the run above this many bad inputs (count, or fraction like 0.05 or 5%).")
    resume: bool = setting(False, result=False, commands=COMMANDS,
                           help="Continue an interrupted run in --output, skipping committed work.")
    ray_address: str | None = setting(None, result=False,
                                      help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    progress: bool | None = setting(None, result=False, help="Progress bars (default: on a terminal only).")
    verbose: bool = setting(False, result=False,
                            help="Show Ray's own log lines (INFO and up; by default warnings and errors).")

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise ConfigError("--batch-size and --shard-size must be at least 1.")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1.")


@dataclass(frozen=True)
class OutputConfig:
    """Where masks, metrics and the report go."""

    uri: str = setting("", result=False, key="output",
                       help="Output folder: local path or s3://bucket/prefix.")
    format: str = setting("parquet", result=True, help="Masks as Parquet shards, one PNG per image, or both.")
    png_values: str = setting("classes", result=True,
                              help="PNG files: class indices (VOC palette up to 21 classes), or the values "
                                   "the model family's predict script writes (upstream: milesial "
                                   "class*255//C or the checkpoint's mask_values, zhixuhao 0/255).")
    report: bool = setting(True, result=False, commands=("score",),
                           help="score: write report.html/report.md (plots, worst images, errors) next to "
                                "metrics.json.")
    bootstrap: int = setting(1000, result=False,
                             help="score: bootstrap resamples of the images for the 95% interval of every "
                                  "score (metrics.json `intervals`); 0 turns intervals off.")
    bootstrap_group: str | None = setting(
        None, result=False,
        help="score, compare, --gate: resample groups of ids instead of images, a group per value of this "
             "regex (its first group, else its match), e.g. '^[^_]+' for CamVid sequences.")
    bootstrap_seed: int = setting(0, result=False, help="Seed of the bootstrap's resampling.")

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ConfigError(f"--bootstrap is a number of resamples (1000 is usual, 0 turns intervals off), "
                              f"got {self.bootstrap}.")
        if self.bootstrap_group is not None:
            try:
                re.compile(self.bootstrap_group)
            except re.error as err:
                raise ConfigError(f"--bootstrap-group {self.bootstrap_group!r} is not a valid regex ({err}); "
                                  "e.g. '^[^_]+' groups CamVid ids by sequence.") from err
        if self.format not in FORMATS:
            raise ConfigError(f"Expected --format parquet, png or both, got {self.format!r}.")
        if self.png_values not in PNG_VALUES:
            raise ConfigError(f"Expected --png-values {' or '.join(PNG_VALUES)}, got {self.png_values!r}.")

    @property
    def formats(self) -> tuple[str, ...]:
        """The file formats written: a subset of ("parquet", "png")."""
        return ("parquet", "png") if self.format == "both" else (self.format,)


@dataclass(frozen=True)
class TrackingConfig:
    """Scheduled runs (`pipeline.history`): run id, history file and the regression gate."""

    run_id: str | None = setting(None, result=False,
                                 help="Write under <output>/<run id>/ (default with --history: UTC time + "
                                      "config hash). Re-running an id replaces that run's outputs and "
                                      "history line.")
    history: str | None = setting(None, result=False,
                                  help="Run history, local or s3:// JSON Lines: one line per run (mIoU, "
                                       "per-class IoU, throughput).")
    baseline: str | None = setting(None, result=False, commands=("score",),
                                   help="Regression gate: a run id in --history, or last-good (latest passed "
                                        "run on the same dataset). The run fails if its mIoU falls more than "
                                        "--max-drop below it.")
    max_drop: float = setting(0.01, result=False, commands=("score",),
                              help="Largest allowed mIoU drop below --baseline (absolute, e.g. 0.02 = two "
                                   "IoU points).")
    gate: str = setting("plain", result=False,
                        help="plain: fail when the mIoU drop exceeds --max-drop; significant: fail only when "
                             "the drop's paired 95% bootstrap interval lies wholly above --max-drop.")

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise ConfigError(f"Expected --gate {' or '.join(GATES)}, got {self.gate!r}.")
        if not 0 <= self.max_drop <= 1:
            raise ConfigError("--max-drop is an absolute mIoU drop between 0 and 1 (e.g. 0.02), got "
                              f"{self.max_drop}.")


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "processing": ProcessingConfig, "backend": BackendConfig,
    "execution": ExecutionConfig, "output": OutputConfig, "tracking": TrackingConfig,
}


@dataclass(frozen=True)
class FlatKey:
    """Where a flat key lives: `section` (None for a top-level field) and `field` name."""

    key: str
    section: str | None
    field: dataclasses.Field


def _flat_keys() -> dict[str, FlatKey]:
    keys: dict[str, FlatKey] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f.metadata.get("key") or f.name
            if key in keys:
                raise TypeError(f"configuration key {key!r} is defined twice")
            keys[key] = FlatKey(key, section, f)
    return keys


@dataclass(frozen=True)
class RunConfig:
    """Everything one scoring or prediction run needs, in sections.

    Build it from flat keys (`RunConfig.create(input=..., output=..., checkpoint=...)`), from a dict or config
    file (`RunConfig.from_dict`), or from the CLI (`pipeline.cli.options`).
    """

    command: Literal["score", "predict"] = setting("score", result=True, help="score (labels) or predict.")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    s3: S3Options = setting(result=False, factory=S3Options, help="S3 endpoint, region, anonymous access.")

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ConfigError(f"Expected command score or predict, got {self.command!r}.")
        if not self.data.input:
            raise ConfigError("--input is required: a local folder or s3://bucket/prefix.")
        if not self.output.uri:
            raise ConfigError("--output is required: a local folder or s3://bucket/prefix.")
        if not self.model.checkpoint:
            raise ConfigError("--checkpoint is required: a local path or s3:// URI of the model weights.")
        if self.tracking.baseline and not self.tracking.history:
            raise ConfigError("--baseline needs --history FILE: the baseline run is looked up in that "
                              "history.")
        if self.tracking.baseline and self.command != "score":
            raise ConfigError("--baseline gates on mIoU, which only `score` measures: drop it for `predict`.")
        if self.tracking.gate == "significant" and self.output.bootstrap == 0:
            raise ConfigError("--gate significant decides with a bootstrap interval: drop --bootstrap 0 (or "
                              "use --gate plain).")

    @property
    def scoring(self) -> bool:
        """True for `score` (labels read, metrics computed), False for `predict`."""
        return self.command == "score"

    # -- flat view ------------------------------------------------------------------------------------------

    @classmethod
    def keys(cls) -> dict[str, FlatKey]:
        """Every flat key (CLI option name, config file key) and where it lives."""
        return FLAT_KEYS

    def get(self, key: str) -> Any:
        """The value of a flat key, e.g. `config.get("batch_size")`."""
        where = _lookup(key)
        owner = self if where.section is None else getattr(self, where.section)
        return getattr(owner, where.field.name)

    def items(self) -> Iterator[tuple[str, Any]]:
        """(flat key, value) of every field, sections in order."""
        yield "command", self.command
        for key in FLAT_KEYS:
            yield key, self.get(key)
        yield "s3", self.s3

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-ready (tuples as lists); safe to log: no credentials are ever part of the config."""
        return json.loads(json.dumps({k: dataclasses.asdict(v) if k == "s3" else v for k, v in self.items()}))

    def result_settings(self) -> dict[str, Any]:
        """The flat settings that change masks or metrics (fields marked `result`), JSON-ready."""
        settings = {"command": self.command}
        settings.update({key: self.get(key) for key,
                         where in FLAT_KEYS.items() if where.field.metadata["result"]})
        return json.loads(json.dumps(settings))

    def config_hash(self) -> str:
        """8 hex digits identifying the settings deciding a run's results (not where or how fast it runs)."""
        text = json.dumps(self.result_settings(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with flat keys changed, e.g. `config.replace(output="out", resume=True)`."""
        return RunConfig.from_dict(changes, base=self)

    # -- construction ---------------------------------------------------------------------------------------

    @classmethod
    def create(cls, **settings: Any) -> RunConfig:
        """From flat keys: `RunConfig.create(input="data", output="out", checkpoint="unet.pth")`."""
        return cls.from_dict(settings)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
        """From flat keys and/or section dicts (config files, metrics.json's `config`), over `base`'s values.

        Values are converted as the CLI converts them (`"256x320"` sizes, `"0,255"` label values, `"5%"`).
        """
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        top: dict[str, Any] = {}
        for key, value in data.items():
            if key in SECTIONS and isinstance(value, dict):
                for inner, inner_value in value.items():
                    where = _lookup(inner, section=key)
                    sections[key][where.field.name] = _convert(where.field, inner_value)
            elif key == "command":
                top["command"] = value
            elif key == "s3":
                top["s3"] = value if isinstance(value, S3Options) else S3Options(**(value or {}))
            else:
                where = _lookup(key)
                sections[where.section or ""][where.field.name] = _convert(where.field, value)
        built = {}
        for name, cls_ in SECTIONS.items():
            current = getattr(base, name) if base is not None else cls_()
            built[name] = dataclasses.replace(current, **sections[name]) if sections[name] else current
        if base is not None:
            top.setdefault("command", base.command)
            top.setdefault("s3", base.s3)
        return cls(**top, **built)


FLAT_KEYS: dict[str, FlatKey] = _flat_keys()


def section_from(settings: dict[str, Any], cls: type[SectionT]) -> SectionT:  # cls: a section dataclass
    """The `cls` section of flat settings, e.g. metrics.json's `config`; other sections' keys are ignored."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f.metadata.get("key") or f.name
        if key in settings:
            values[f.name] = _convert(f, settings[key])
    return cls(**values)


def _lookup(key: str, section: str | None = None) -> FlatKey:
    if section is not None:
        for f in dataclasses.fields(SECTIONS[section]):
            if key in (f.name, f.metadata.get("key")):
                return FlatKey(f.metadata.get("key") or f.name, section, f)
        valid = sorted(f.metadata.get("key") or f.name for f in dataclasses.fields(SECTIONS[section]))
    else:
        if key in FLAT_KEYS:
            return FLAT_KEYS[key]
        valid = sorted([*FLAT_KEYS, "command", "s3"])
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    where = f" in section {section!r}" if section else ""
    raise ConfigError(f"Unknown run setting {key!r}{where}.{hint} Valid settings: {', '.join(valid)} (the "
                      "long option names, with '_' for '-').")


def _convert(f: dataclasses.Field, value: Any) -> Any:
    convert = f.metadata.get("convert")
    if convert is not None:
        return convert(value)
    if isinstance(value, list):
        return tuple(value)
    return value
