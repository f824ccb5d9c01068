"""`backend:precision[:key=value...]`: a backend configuration, for `bench --compare` and `table --variants`.

Example:
    >>> v = BackendVariant.parse("torch:fp32:channels_last=0")
    >>> v.backend, v.precision, v.options, v.label
    ('torch', 'fp32', {'channels_last': 0}, 'torch:fp32:channels_last=0')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class BackendVariant:
    """A backend name, a precision and backend options (`RunConfig.backend.options`)."""

    backend: str
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> BackendVariant:
        """`torch`, `onnx:int8`, `torch:fp32:channels_last=0`; checked against the backend registry."""
        from pipeline.backends import BACKENDS

        parts = [p.strip() for p in text.strip().split(":")]
        if not parts or not parts[0]:
            raise ConfigError("Expected a variant backend:precision[:key=value] (e.g. torch:fp32, "
                              f"onnx:int8, torch:fp32:channels_last=0), got {text!r}.")
        entry = BACKENDS.get(parts[0])
        precision = parts[1] if len(parts) > 1 and parts[1] else entry.precisions[0]
        entry.check_precision(precision)
        options: dict[str, Any] = {}
        for part in parts[2:]:
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise ConfigError(f"Variant option {part!r} in {text!r} must be key=value (e.g. "
                                  "channels_last=0).")
            options[key] = int(value) if value.lstrip("-").isdigit() else value
        return cls(entry.name, precision, options)

    @property
    def label(self) -> str:
        extra = "".join(f":{k}={v}" for k, v in self.options.items())
        return f"{self.backend}:{self.precision}{extra}"


def parse_variants(text: str | list[str]) -> tuple[BackendVariant, ...]:
    """Comma-separated variants (or a list of them)."""
    items = text if isinstance(text, list) else text.split(",")
    variants = tuple(BackendVariant.parse(str(item)) for item in items if str(item).strip())
    if not variants:
        raise ConfigError("No backend:precision variant given (e.g. torch:fp32,onnx:int8).")
    return variants
