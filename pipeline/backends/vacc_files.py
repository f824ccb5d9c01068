"""The files a VACC run reads: the compiled-model suite and the VDSP pre-processing JSON.

A model compiled by Vastai's vamc is three files with one prefix, `<prefix>.so`, `<prefix>.json` and
`<prefix>.params` (the zoo's prefix is usually `.../mod`); `vaststreamx.Model` takes the prefix.
`--vacc-model` may name the prefix or the folder that holds exactly one such suite, locally or on S3. S3
suites are copied to a node-local cache by each actor (the runtime only opens local files).

The VDSP JSON configures the on-device pre-processing op (resize + normalise + tensorize). The zoo's UNet
JSONs use OpType `FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR` with `NormaType: DIV255` (Mean/Std are present
but not applied). Without `vacc_vdsp_params`, the backend writes that JSON for the compiled model's input
size.

The op's input is always `IimageFormat: RGB_PLANAR`, (3, h, w) uint8 planes, whatever the model's channels:
of the zoo's 758 VDSP JSONs that name an IimageFormat, 754 say RGB_PLANAR, 4 BGR888 and none GRAY, including
those of its one-channel models (drrn, vdsr: [1, 1, 256, 256]; cnn_ctc: [1, 1, 32, 100]); the drrn and vdsr
runners replicate the one channel (the Y of YCrCb) into the three planes and pass RGB_PLANAR images. The vacc
backend does the same for one-channel models (zhixuhao): their grey plane is replicated three times. How the
device maps the op's three planes onto a one-channel model input is not documented; with three equal planes
every choice gives the same values. A JSON that says GRAY is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.backends.base import ToNetworkInput
from pipeline.errors import ConfigError
from pipeline.io import fs

SUITE_SUFFIXES = (".so", ".json", ".params")
FUSION_OP = "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR"
# IimageFormat strings of the JSON this backend feeds -> number of planes the host passes.
IMAGE_FORMAT_CHANNELS = {"RGB_PLANAR": 3}
MODEL_CHANNELS = (1, 3)  # compiled model inputs the RGB_PLANAR op can feed (1: the grey plane replicated)
NORM_TYPES = ("DIV255", "DIV255_MINUSMEAN_DIVSTD")


def suite_files(prefix: str) -> list[str]:
    return [prefix + suffix for suffix in SUITE_SUFFIXES]


def resolve_suite(uri: str, s3: fs.S3Options | None = None) -> str:
    """`--vacc-model` (a prefix, or a folder holding one suite) -> the prefix, after checking all three files.

    Raises:
        ConfigError: a missing file (named), or a folder with no suite or several.
    """
    uri = fs.normalize(uri)
    storage = fs.storage_for(uri, s3)
    if storage.is_dir(uri):
        names = {fs.basename(f) for page in storage.iter_files(uri) for f in page}
        stems = sorted({n[: -len(".params")] for n in names if n.endswith(".params")})
        complete = [s for s in stems if all(s + suffix in names for suffix in SUITE_SUFFIXES)]
        if len(complete) != 1:
            found = ", ".join(sorted(names)) or "no files"
            raise ConfigError(
                f"--vacc-model {uri} is a folder, so it must hold exactly one compiled model "
                f"(<name>.so, <name>.json, <name>.params); it has {found}. Pass the prefix itself, e.g. "
                f"{fs.join(uri, 'mod')}.")
        return fs.join(uri, complete[0])
    missing = [f for f in suite_files(uri) if not storage.exists(f)]
    if missing:
        raise ConfigError(
            f"The compiled VACC model {uri} is incomplete: {', '.join(missing)} does not exist. --vacc-model "
            "takes the prefix of the three files vamc writes (<prefix>.so, <prefix>.json, <prefix>.params), "
            "e.g. deploy_weights/unet-fp16/mod; compile the model with `vamc compile` (see `unet-pipeline "
            "export`).")
    return uri


def local_copy(uris: list[str], cache_root: str, s3: fs.S3Options | None = None) -> list[str]:
    """Local paths for `uris`: local ones as they are; S3 ones downloaded into `cache_root` on this node.

    Every call downloads (once per actor start, so a recompiled model under the same URI is never served
    stale) and rewrites the cached file only when its bytes changed; writes are atomic, so actors that start
    at the same time never see half a file.
    """
    out = []
    for uri in uris:
        if not fs.is_s3(uri):
            out.append(uri)
            continue
        folder = os.path.join(cache_root, hashlib.sha256(uri.rsplit("/", 1)[0].encode()).hexdigest()[:16])
        path = os.path.join(folder, fs.basename(uri))
        data = fs.read_bytes(uri, s3)
        if not (os.path.exists(path) and os.path.getsize(path) == len(data) and _read(path) == data):
            fs.write_bytes(path, data)
        out.append(path)
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class VdspConfig:
    """The fields of a VDSP JSON this backend relies on.

    Attributes:
        image_format: "RGB_PLANAR" (what the host passes: three planes).
        norm_type: "DIV255" (x / 255) or "DIV255_MINUSMEAN_DIVSTD" ((x / 255 - mean) / std).
        output_size: (OimageHeight, OimageWidth), the network input the op resizes to.
        mean, std: per-channel values for DIV255_MINUSMEAN_DIVSTD.
    """

    image_format: str
    norm_type: str
    output_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        """Planes of the images the op takes (3 for RGB_PLANAR)."""
        return IMAGE_FORMAT_CHANNELS[self.image_format]


def read_vdsp_config(uri: str, s3: fs.S3Options | None = None) -> VdspConfig:
    """Read and check a VDSP JSON file (see `parse_vdsp`)."""
    try:
        data = json.loads(fs.read_bytes(uri, s3))
    except ValueError as err:
        raise ConfigError(f"{uri} is not valid JSON ({err}): expected a VDSP pre-processing JSON as in "
                          "Vastai's model zoo (cv/segmentation/unet/build_in/vdsp_params/).") from err
    return parse_vdsp(data, uri)


def parse_vdsp(data: Any, where: str) -> VdspConfig:
    """The fields of a parsed VDSP JSON; ConfigError naming `where` if it is not one this backend can feed."""
    try:
        op_type, config = data["OpType"], data["OpConfig"]
        parsed = VdspConfig(config["IimageFormat"], config["NormaType"],
                            (int(config["OimageHeight"]), int(config["OimageWidth"])),
                            tuple(float(v) for v in config.get("Mean", ())),
                            tuple(float(v) for v in config.get("Std", ())))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{where} is not a VDSP pre-processing JSON ({type(err).__name__}: {err}): expected "
            f'{{"OpType": "{FUSION_OP}", "OpConfig": {{"IimageFormat": ..., "NormaType": ..., '
            '"OimageWidth": ..., "OimageHeight": ..., ...}} as in Vastai\'s model zoo '
            "(cv/segmentation/unet/build_in/vdsp_params/)."
        ) from err
    if parsed.image_format == "GRAY":
        raise ConfigError(
            f"{where} has IimageFormat GRAY, which none of Vastai's zoo VDSP JSONs uses (its one-channel "
            "models take RGB_PLANAR images with the one channel replicated to the three planes). Use "
            "IimageFormat RGB_PLANAR, as `unet-pipeline export` now writes (re-export, or edit the JSON), "
            "or leave vacc_vdsp_params unset; the vacc backend replicates a one-channel model's grey plane "
            "itself.")
    if (op_type != FUSION_OP or parsed.image_format not in IMAGE_FORMAT_CHANNELS
            or parsed.norm_type not in NORM_TYPES):
        raise ConfigError(
            f"{where} has OpType {op_type!r}, IimageFormat {parsed.image_format!r}, NormaType "
            f"{parsed.norm_type!r}; this backend feeds OpType {FUSION_OP} with IimageFormat one of "
            f"{sorted(IMAGE_FORMAT_CHANNELS)} and NormaType one of {list(NORM_TYPES)}.")
    if parsed.norm_type == "DIV255_MINUSMEAN_DIVSTD" and min(len(parsed.mean),
                                                             len(parsed.std)) < parsed.channels:
        raise ConfigError(f"{where} normalises with DIV255_MINUSMEAN_DIVSTD but does not give Mean and Std "
                          f"for {parsed.channels} channel(s).")
    return parsed


def default_vdsp_json(channels: int, height: int, width: int) -> dict[str, Any]:
    """The zoo's UNet VDSP JSON (RGB_PLANAR, DIV255, bilinear) for a model input of (channels, height, width).

    One-channel models get the same RGB_PLANAR JSON (the host replicates their plane; module docstring).

    Raises:
        ConfigError: a model input of other than 1 or 3 channels.
    """
    if channels not in MODEL_CHANNELS:
        raise ConfigError(
            f"The compiled VACC model takes {channels}-channel input; the VDSP op takes RGB_PLANAR images, "
            "which feed 3-channel models (and 1-channel ones, the grey plane replicated). Compile the model "
            "with 3 or 1 input channels.")
    return {"OpType": FUSION_OP, "OpConfig": {
        "IimageFormat": "RGB_PLANAR", "IimageWidth": width, "IimageHeight": height,
        "OimageWidth": width, "OimageHeight": height, "IimageWidthPitch": width, "IimageHeightPitch": height,
        "Mean": [0.485107421875, 0.4560546875, 0.406005859375],  # ImageNet's, fp16-rounded; unused by DIV255
        "Std": [0.22900390625, 0.2239990234375, 0.2249755859375],
        "NormaType": "DIV255", "ColorCvtCode": "NO_CHANGE", "ResizeType": "BILINEAR_CV"}}


def write_default_vdsp(channels: int, height: int, width: int, cache_root: str) -> str:
    """Write `default_vdsp_json` into the node-local cache (atomically) and return its path."""
    path = os.path.join(cache_root, f"vdsp-{channels}x{height}x{width}.json")
    fs.write_bytes(path, json.dumps(default_vdsp_json(channels, height, width), indent=2).encode())
    return path


def device_normalisation(config: VdspConfig, images: np.ndarray) -> np.ndarray:
    """What the VDSP op's NormaType does to (N, h, w, c) uint8 planes, as (N, c, h, w) float32."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    if config.norm_type == "DIV255_MINUSMEAN_DIVSTD":
        channels = x.shape[1]
        mean = np.asarray(config.mean[:channels], np.float32)[:, None, None]
        std = np.asarray(config.std[:channels], np.float32)[:, None, None]
        x = (x - mean) / std
    return x


def check_same_normalisation(config: VdspConfig, to_network_input: ToNetworkInput, where: str,
                             model_channels: int = 3) -> None:
    """Refuse a VDSP op whose normalisation differs from the run's processing: the compiled network would see
    other values than the checkpoint was trained on. Compared at fp16 precision, the device's, on grey probes
    (equal planes, as a one-channel model's replicated plane): for a one-channel model the op's first plane is
    compared (with equal planes, its normalisation by the first Mean/Std)."""
    probe = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), config.channels, axis=3)
    host = np.asarray(to_network_input(probe[..., :model_channels]), np.float32)
    device = device_normalisation(config, probe)[:, :model_channels]
    if host.shape != device.shape or not np.allclose(host, device, rtol=1e-3, atol=1e-3):
        raise ConfigError(
            f"The VDSP op in {where} normalises with NormaType {config.norm_type}, which differs from what "
            "this run's processing feeds the network (its to_network_input). Use a VDSP JSON whose "
            "NormaType matches (the UNet processings divide by 255: NormaType DIV255, as in the zoo's UNet "
            "JSONs), or leave the backend option vacc_vdsp_params unset to use that default.")
