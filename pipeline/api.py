"""The Python API: `pipeline.score(...)` and `pipeline.predict(...)`, the two CLI commands as functions.

    from pipeline import score

    result = score(input="data/val", output="runs/val", checkpoint="unet.pth", scale=0.5)
    print(result.miou, result.per_class[0], result.paths["metrics"])

The keyword arguments are the CLI's long options with '_' for '-' (`input`, `batch_size`, `num_classes`,
`s3_endpoint`, `config` for a config file, ...), with the CLI's defaults: `score()` with no `input` runs the
built-in default, `predict` reads the `folder` layout unless told otherwise. The CLI builds its runs with the
functions below, so both take the same settings the same way. Nothing here imports Ray or torch before a run
starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import COMMAND_DEFAULTS, SECTIONS, RunConfig
from pipeline.errors import ConfigError
from pipeline.io.fs import S3Options

if TYPE_CHECKING:
    from pipeline.progress import Progress
    from pipeline.results import RunResult

MODEL_OVERRIDES = ("num_classes", "in_channels", "bilinear", "base_channels", "conv_bias")
"""Options that override what the checkpoint says about the model (RunConfig.model.overrides)."""
S3_SETTINGS = ("s3_endpoint", "s3_region", "s3_anonymous")
"""Options that make the run's `S3Options` (credentials only ever come from the environment)."""
CONFIG_FILE = "config_file"
OPTION_KEYS = {"address": "ray_address"}
"""Long option names (with '_' for '-') that differ from the flat configuration key they set."""


def option_names() -> list[str]:
    """The names a config file or the Python API may use: the run commands' long options, '_' for '-'."""
    renamed = {key: name for name, key in OPTION_KEYS.items()}
    return sorted({renamed.get(key, key) for key in RunConfig.keys()} | {*MODEL_OVERRIDES, *S3_SETTINGS})


def settings_by_key(settings: dict[str, Any], source: str) -> dict[str, Any]:
    """`settings` named by option (or flat key, or section) with option names turned into flat keys; an
    unknown name is refused naming `source`, the closest option name and the valid ones."""
    import difflib

    valid = set(option_names()) | set(RunConfig.keys()) | set(SECTIONS) | {"s3", CONFIG_FILE}
    for name in settings:
        if name not in valid:
            close = difflib.get_close_matches(name, option_names(), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown setting {name!r} in {source}.{hint} Valid names (the long options, "
                              f"'_' for '-'): {', '.join(option_names())}.")
    return {OPTION_KEYS.get(name, name): value for name, value in settings.items()}


def _file_settings(data: dict[str, Any], path: str) -> dict[str, Any]:
    """A config file's settings as RunConfig.from_dict takes them (model overrides, S3 options folded in)."""
    settings = settings_by_key(data, path)
    overrides = {key: settings.pop(key) for key in MODEL_OVERRIDES if key in settings}
    if overrides:
        settings["model_config"] = {**settings.get("model_config", {}), **overrides}
    s3 = {key: settings.pop(key) for key in S3_SETTINGS if key in settings}
    if s3:
        settings["s3"] = S3Options(s3.get("s3_endpoint"), s3.get("s3_region"), bool(s3.get("s3_anonymous")))
    return settings


def load_config_file(path: str | None) -> dict[str, Any]:
    """The settings of a JSON or YAML config file (option names and/or sections), by flat key."""
    return _file_settings(read_mapping(path), path) if path else {}


def read_mapping(path: str) -> dict[str, Any]:
    """The mapping a JSON or YAML file holds (run settings, or `table`'s spec)."""
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as err:
            raise ConfigError(f"{path} is YAML but PyYAML is not installed: pip install pyyaml, or use "
                              "JSON.") from err
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of run settings (e.g. {{\"input\": ..., \"output\": "
                          "...}).")
    return data


def builtin_defaults(settings: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """With no input (in `settings` or their config file), the built-in default run's settings; else {}.

    `explicit`: the settings the user gave (a checkpoint or layout without an input is refused).
    """
    from pipeline.defaults import DEFAULT_OUTPUT, DEFAULT_RUN, default_checkpoint, default_dataset

    if settings.get("input") or load_config_file(settings.get(CONFIG_FILE)).get("input"):
        return {}
    if "checkpoint" in explicit or "layout" in explicit:
        raise ConfigError("--checkpoint/--layout were given without --input: pass --input DATASET too.")
    return {**DEFAULT_RUN, "input": default_dataset(), "checkpoint": default_checkpoint(),
            "output": settings.get("output") or DEFAULT_OUTPUT}


def build_config(command: str, params: dict[str, Any], explicit: set[str],
                 defaults: dict[str, Any] | None = None) -> RunConfig:
    """Merge RunConfig's defaults < `defaults` (the command's, the built-in run) < config file < `params`.

    `params`: option values by flat key (plus MODEL_OVERRIDES, S3_SETTINGS and `config_file`); only those
    named in `explicit` override the file.
    """
    merged: dict[str, Any] = {"command": command, **(defaults or {})}
    merged.update(load_config_file(params.get(CONFIG_FILE)))
    for key in RunConfig.keys():
        if key in explicit and params.get(key) is not None:
            merged[key] = params[key]
    overrides = {key: params[key] for key in MODEL_OVERRIDES if params.get(key) is not None}
    if overrides:
        merged["model_config"] = {**merged.get("model_config", {}), **overrides}
    if any(params.get(k) for k in S3_SETTINGS) or "s3" not in merged:
        merged["s3"] = S3Options(params.get("s3_endpoint"), params.get("s3_region"),
                                 bool(params.get("s3_anonymous")))
    return RunConfig.from_dict(merged)


def execute(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the pipeline; a tracked run (--run-id / --history) goes through the run history and its gate."""
    from pipeline.history import run_tracked
    from pipeline.run import run

    if config.tracking.run_id or config.tracking.history:
        return run_tracked(config, lambda tracked: run(tracked, progress))
    return run(config, progress)


def config_for(command: str, options: dict[str, Any]) -> RunConfig:
    """The RunConfig that `unet-pipeline <command>` with these options (by flat key) would run."""
    renamed = {CONFIG_FILE if key == "config" else key: value for key, value in options.items()}
    settings = settings_by_key(renamed, "the keyword arguments")
    explicit = {key for key, value in settings.items() if value is not None}
    defaults = dict(COMMAND_DEFAULTS.get(command, {}))
    if command == "score":
        defaults.update(builtin_defaults(settings, explicit))
    return build_config(command, settings, explicit, defaults)


def _run(command: str, options: dict[str, Any]) -> RunResult:
    from pipeline.progress import progress_for

    config = config_for(command, options)
    return execute(config, progress_for(config.execution.progress))


def score(**options: Any) -> RunResult:
    """Score a model on a labelled dataset, as `unet-pipeline score` does; returns the RunResult.

    Keyword arguments: the CLI options (`input`, `output`, `checkpoint`, `model`, `layout`, `scale`, ...).
    Raises `pipeline.errors.PipelineError` subclasses with the CLI's one-line messages.
    """
    return _run("score", options)


def predict(**options: Any) -> RunResult:
    """Predict masks without labels, as `unet-pipeline predict` does (layout `folder` by default)."""
    return _run("predict", options)
