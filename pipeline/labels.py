"""What label pixel values mean: the ignore index and label maps (`--ignore-index`, `--label-map`).

A label file holds raw values (0..255). A run turns them into class indices in one step, a 256-entry lookup
table built once per run (`label_table`):

1. `--label-map RAW:CLASS,...` (or `--label-values`, which is the map `value i -> class i`) maps raw values to
   classes; without a map a raw value is its class index;
2. `--ignore-index N`: a value N (after the map) is not scored; a raw N that the map does not name is not
   scored either. The default is the layout's (255 for voc, pairs, parquet, webdataset); `none` scores every
   value, so a 255 outside the classes is an error;
3. a map target `ignore` (or 255) is never scored, whatever `--ignore-index` says.

Ignored pixels become `IGNORE_INDEX` (255) inside the pipeline: class masks are uint8 and a model has at most
255 classes, so that value is never a class. `reduce_zero_label` is mmsegmentation's convention (ADE20K, COCO-
Stuff): raw 0 is ignored and every other value v is class v - 1.

Example:
    >>> parse_label_map("255:1, 0:0")
    '0:0,255:1'
    >>> label_map_pairs("0:ignore,1:0", 2)
    {0: 255, 1: 0}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.errors import ConfigError
from pipeline.io.images import IGNORE_INDEX

REDUCE_ZERO_LABEL = "reduce_zero_label"
NO_IGNORE: Literal["none"] = "none"
IGNORED_WORD = "ignore"
UNMAPPED = -1  # in a label table: a raw value that is neither a class nor ignored (an error for that label)
_PAIR = re.compile(r"^\s*(\d+)\s*[:=]\s*(\d+|ignore)\s*$", re.IGNORECASE)
_INLINE = re.compile(r"^\s*\d+\s*[:=]")

IgnoreIndex = int | Literal["none"] | None
"""None: the layout's default; "none": nothing ignored; N: label value N (after the map) is not scored."""


def parse_ignore_index(value: Any) -> IgnoreIndex:
    """`--ignore-index`: an integer 0..255, `none` (nothing ignored), or None/"" (the layout's default).

    Example:
        >>> parse_ignore_index("11"), parse_ignore_index("None"), parse_ignore_index(None)
        (11, 'none', None)
    """
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() in (NO_IGNORE, "off", "null"):
        return NO_IGNORE
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"Expected --ignore-index as a label value 0..255 or `none`, got {value!r}."
                          ) from None
    if not 0 <= number <= 255:
        raise ConfigError(f"--ignore-index must be a label value 0..255 (or `none`), got {number}.")
    return number


def parse_label_map(value: Any) -> str | None:
    """`--label-map`: the canonical text `RAW:CLASS,...` (sorted by raw value) or `reduce_zero_label`.

    Takes inline pairs (`0:0,255:1`; `ignore` as a class means not scored), `reduce_zero_label`, a mapping
    or list of pairs (config files), or the path of a file holding pairs (commas or new lines, `#` comments)
    or a JSON object `{"RAW": CLASS}`. A file is read when the configuration is built, so the run records
    the map itself, and `--resume` compares the map, not the file name.
    """
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return _canonical({_raw(k): _target(v) for k, v in value.items()}, str(value))
    if isinstance(value, list | tuple):
        return _canonical({_raw(k): _target(v) for k, v in value}, str(value))
    text = str(value).strip()
    if text.lower().replace("-", "_") == REDUCE_ZERO_LABEL:
        return REDUCE_ZERO_LABEL
    if _INLINE.match(text):
        return _canonical(_pairs(text, "--label-map"), text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"--label-map {text!r} is neither RAW:CLASS pairs (e.g. 0:0,255:1), "
                          f"{REDUCE_ZERO_LABEL}, nor an existing file of such pairs.")
    content = path.read_text()
    if content.lstrip().startswith("{"):
        try:
            data = json.loads(content)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--label-map file {path}: not valid JSON ({err}).") from None
        return parse_label_map(data)
    lines = (line.split("#", 1)[0] for line in content.splitlines())
    return _canonical(_pairs(",".join(lines), f"--label-map file {path}"), str(path))


def label_map_pairs(text: str, num_classes: int) -> dict[int, int]:
    """Raw value -> class (255 = not scored) of a canonical `parse_label_map` text, for a model of
    `num_classes` classes (reduce_zero_label maps raw 1..C to classes 0..C-1)."""
    if text == REDUCE_ZERO_LABEL:
        return {0: IGNORE_INDEX, **{v: v - 1 for v in range(1, min(num_classes, 254) + 1)}, 255: IGNORE_INDEX}
    return _pairs(text, "--label-map")


def label_values_map(values: tuple[int, ...]) -> dict[int, int]:
    """`--label-values 0,255`: raw value of each class, i.e. the map `values[i] -> i`."""
    return {int(v): i for i, v in enumerate(values)}


def label_table(num_classes: int, mapping: Mapping[int, int] | None, ignore_index: int | None,
                ) -> np.ndarray:
    """The 256-entry lookup table raw value -> class, `IGNORE_INDEX` (not scored) or `UNMAPPED` (an error).

    Example:
        >>> t = label_table(2, None, 255); (int(t[1]), int(t[255]), int(t[7]))
        (1, 255, -1)
    """
    table = np.full(256, UNMAPPED, dtype=np.int16)
    if mapping is None:
        table[:num_classes] = np.arange(min(num_classes, 256))
    else:
        for raw, cls in mapping.items():
            if cls != IGNORE_INDEX and not 0 <= cls < num_classes:
                raise ConfigError(f"The label map sends raw value {raw} to class {cls}, but the model has "
                                  f"{num_classes} classes (0..{num_classes - 1}); use `ignore` for values "
                                  "that are not scored.")
            table[raw] = cls
    if ignore_index is not None:
        table[table == ignore_index] = IGNORE_INDEX
        if mapping is None or ignore_index not in mapping:
            table[ignore_index] = IGNORE_INDEX
    return table


def _raw(value: Any) -> int:
    try:
        raw = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"--label-map: raw label value {value!r} is not an integer 0..255.") from None
    if not 0 <= raw <= 255:
        raise ConfigError(f"--label-map: raw label value {raw} is outside 0..255.")
    return raw


def _target(value: Any) -> int:
    if str(value).strip().lower() == IGNORED_WORD:
        return IGNORE_INDEX
    return _raw(value)


def _pairs(text: str, where: str) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for item in (part for part in re.split(r"[,\n]", text) if part.strip()):
        match = _PAIR.match(item)
        if match is None:
            raise ConfigError(f"{where}: {item.strip()!r} is not RAW:CLASS (e.g. 0:0,255:1 or 0:ignore).")
        raw = _raw(match.group(1))
        if raw in mapping:
            raise ConfigError(f"{where}: raw value {raw} is mapped twice.")
        mapping[raw] = _target(match.group(2))
    if not mapping:
        raise ConfigError(f"{where} holds no RAW:CLASS pair.")
    return mapping


def _canonical(mapping: dict[int, int], source: str) -> str:
    if not mapping:
        raise ConfigError(f"--label-map {source} holds no RAW:CLASS pair.")
    return ",".join(f"{raw}:{'ignore' if cls == IGNORE_INDEX else cls}"
                    for raw, cls in sorted(mapping.items()))
