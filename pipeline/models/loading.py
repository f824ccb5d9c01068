"""Build a registered model, or build one from a checkpoint and check that every tensor fits it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import CheckpointError, ConfigError
from pipeline.io.fs import S3Options
from pipeline.models import MODELS, ModelFamily
from pipeline.models.checkpoints import Checkpoint, CheckpointInfo, read_checkpoint

REPORT_CAP = 10  # entries shown per list in a mismatch report


@dataclass(frozen=True)
class LoadedModel:
    """A model built from a checkpoint, in eval mode, with the weights loaded strictly."""

    module: torch.nn.Module
    family: ModelFamily
    config: dict[str, Any]
    checkpoint: CheckpointInfo

    @property
    def num_classes(self) -> int:
        """Channels of the network output."""
        return int(self.config["num_classes"])

    @property
    def in_channels(self) -> int:
        """Channels of the network input."""
        return int(self.config["in_channels"])


@dataclass(frozen=True)
class KeyMismatch:
    """How a checkpoint's state_dict differs from a model's.

    Attributes:
        missing: keys the model has and the file lacks.
        unexpected: keys the file has and the model lacks.
        misshaped: (key, file shape, model shape) for keys both have with different shapes.
    """

    missing: list[str]
    unexpected: list[str]
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)

    def lines(self, cap: int = REPORT_CAP) -> list[str]:
        out = []
        lists = (("missing from the file", self.missing), ("unexpected in the file", self.unexpected))
        for title, items in lists:
            if items:
                out.append(f"{len(items)} key(s) {title}: {', '.join(items[:cap])}{_more(items, cap)}")
        if self.misshaped:
            shown = "; ".join(f"{k}: file {list(f)} vs model {list(m)}" for k, f, m in self.misshaped[:cap])
            more = _more(self.misshaped, cap)
            out.append(f"{len(self.misshaped)} key(s) with another shape: {shown}{more}")
        return out


def _more(items: list[Any], cap: int) -> str:
    return f" (and {len(items) - cap} more)" if len(items) > cap else ""


def compare_state_dicts(model: Mapping[str, torch.Tensor], file: Mapping[str, torch.Tensor]) -> KeyMismatch:
    """Missing, unexpected and mis-shaped keys of `file` against `model` (both name -> tensor)."""
    return KeyMismatch(
        missing=[k for k in model if k not in file],
        unexpected=[k for k in file if k not in model],
        misshaped=[(k, tuple(file[k].shape), tuple(model[k].shape))
                   for k in model if k in file and tuple(file[k].shape) != tuple(model[k].shape)],
    )


def _family(name: str) -> ModelFamily:
    return MODELS.get(name.strip().lower())


def _full_config(family: ModelFamily, config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the given values; None means "use the default"; unknown keys -> ConfigError."""
    given = {k: v for k, v in config.items() if v is not None}
    unknown = sorted(set(given) - set(family.default_config))
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {', '.join(unknown)} for model {family.name!r}. "
            f"Valid options: {', '.join(family.default_config)}.")
    return {**family.default_config, **given}


def create_model(name: str, **config: Any) -> torch.nn.Module:
    """Build a registered model with random weights, in eval mode.

    Args:
        name: registry name, e.g. "milesial", "bubbliiiing-vgg16".
        **config: overrides of the family's default_config (e.g. num_classes=2); None values are ignored.

    Raises:
        UnknownNameError: no such model. ConfigError: unknown or invalid config values.
    """
    family = _family(name)
    module = family.build(_full_config(family, config))
    return module.eval()


def infer_family(state_dict: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str | None:
    """The registered model whose checkpoint this is (first family whose `recognises` says so), or None."""
    for name, family in MODELS.items():
        if family.recognises(state_dict, metadata or {}):
            return name
    return None


def _backbone_only(state_dict: Mapping[str, Any]) -> str | None:
    """'vgg16' / 'resnet50' if the keys are a torchvision ImageNet classifier's (no decoder)."""
    if "features.0.weight" in state_dict and any(k.startswith("classifier.") for k in state_dict):
        return "vgg16"
    if "conv1.weight" in state_dict and "fc.weight" in state_dict and "layer1.0.conv1.weight" in state_dict:
        return "resnet50"
    return None


def _undetected_message(uri: str, state_dict: Mapping[str, Any]) -> str:
    backbone = _backbone_only(state_dict)
    if backbone:
        return (f"{uri} looks like a torchvision ImageNet {backbone} classifier: it has encoder weights only "
                f"and no decoder, so it cannot segment. Train a bubbliiiing-{backbone} model from it first "
                "(upstream train.py) and pass that checkpoint.")
    sample = ", ".join(list(state_dict)[:5])
    return (f"Cannot tell which model {uri} belongs to (first keys: {sample}). "
            f"Pass --model NAME with one of: {', '.join(MODELS.names())}.")


def _hints(family: ModelFamily, config: Mapping[str, Any], checkpoint: Checkpoint) -> list[str]:
    detected = infer_family(checkpoint.state_dict, checkpoint.metadata)
    if detected is None:
        return [_undetected_message(checkpoint.uri, checkpoint.state_dict)]
    if detected != family.name:
        return [f"The keys are those of a {detected} checkpoint: pick the model whose keys these are, "
                f"--model {detected} (or leave --model out to detect it)."]
    inferred = family.config_from_state_dict(checkpoint.state_dict)
    hints = []
    for key, value in inferred.items():
        if key in config and config[key] != value:
            flag = key.replace("_", "-")
            if isinstance(value, bool):
                given, needed = ("" if config[key] else "no-"), ("" if value else "no-")
                fix = (f"drop the --{given}{flag} override (the file needs --{needed}{flag}, which is what "
                       "it gets when the option is left out)")
            else:
                fix = f"drop the --{flag} override (or pass --{flag} {value})"
            hints.append(f"This file looks like a {key}={value!r} {family.name} checkpoint, but the model "
                         f"was built with {key}={config[key]!r}: {fix}.")
    return hints or [f"Check that {checkpoint.uri} was saved from a {family.name} model ({family.source})."]


def load_model(name: str | None, checkpoint: str | Checkpoint, *, s3: S3Options | None = None,
               **overrides: Any) -> LoadedModel:
    """Build a model from a checkpoint: config read off its tensors, weights loaded strictly, eval mode.

    Args:
        name: registry name, or None to detect it from the checkpoint's keys.
        checkpoint: local path or s3:// URI (or an already read Checkpoint).
        s3: endpoint/region for s3:// URIs.
        **overrides: config values to force (None values are ignored); a value that contradicts the tensors
            raises CheckpointError with the mismatch report.

    Raises:
        CheckpointError: unreadable/unsafe file, undetectable model, or tensors that do not fit the model.
        UnknownNameError, ConfigError: bad name or override.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint, s3)
    if name is None:
        name = infer_family(ckpt.state_dict, ckpt.metadata)
        if name is None:
            raise CheckpointError(_undetected_message(ckpt.uri, ckpt.state_dict))
    family = _family(name)
    _full_config(family, overrides)  # unknown override names -> ConfigError before anything is built
    inferred = family.config_from_state_dict(ckpt.state_dict)
    config = {**family.default_config, **inferred, **{k: v for k, v in overrides.items() if v is not None}}
    module = family.build(config)
    mismatch = compare_state_dicts(module.state_dict(), ckpt.state_dict)
    conflicts = [k for k, v in inferred.items() if overrides.get(k) is not None and overrides[k] != v]
    if mismatch or conflicts:
        raise CheckpointError("\n".join(
            [f"Checkpoint {ckpt.uri} does not fit model {family.name!r} built with {config}:"]
            + [f"  {line}" for line in mismatch.lines()]
            + [f"  Fix: {hint}" for hint in _hints(family, config, ckpt)]))
    module.load_state_dict(ckpt.state_dict, strict=True)
    return LoadedModel(module.eval(), family, config, ckpt.info)
