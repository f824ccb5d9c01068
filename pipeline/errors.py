"""The exceptions the pipeline raises. Every message says what went wrong and what to do about it."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """An option, a name or a combination of options is invalid."""


class UnknownNameError(ConfigError):
    """A registry lookup failed (model, processing, layout, backend)."""


class CheckpointError(PipelineError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


class InputError(PipelineError):
    """One input (image or label) cannot be used. The run records it and goes on."""


class BackendUnavailable(PipelineError):
    """A backend needs a package or a device that this machine does not have."""
