"""`export`: a model's ONNX file plus the vamc build configuration, so it can be compiled for a VACC card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.options import model_options
from pipeline.errors import ConfigError
from pipeline.io.images import IMAGE_EXTENSIONS
from pipeline.quantize import CALIBRATION_METHODS
from pipeline.quantize.methods import DEFAULT as DEFAULT_CALIBRATION
from pipeline.sizes import parse_shape

if TYPE_CHECKING:
    from pipeline.export.vamc import CalibrationData

IMAGE_SUFFIXES = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS
                       if e not in (".gif", ".webp"))  # vamc reads with OpenCV


def calibration_data_of(folder: str, requested: int) -> CalibrationData:
    """The calibration images vamc will read from `folder`: its most common image suffix (vamc's sampler reads
    one) and how many files have it, at most `requested` (`get_data_num` is what is really there)."""
    from pipeline.export.vamc import CalibrationData

    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"--calibration-data {folder} is not a folder: pass the folder of calibration "
                          "images that vamc will read (e.g. a few dozen images of the target dataset).")
    if requested < 1:
        raise ConfigError(f"--calibration-images must be at least 1, got {requested}.")
    counts: dict[str, int] = {}
    for file in path.iterdir():
        suffix = file.suffix.lower().lstrip(".")
        if suffix in IMAGE_SUFFIXES and file.is_file():
            counts[suffix] = counts.get(suffix, 0) + 1
    if not counts:
        raise ConfigError(f"--calibration-data {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    suffix = max(counts, key=counts.__getitem__)
    return CalibrationData(str(path.resolve()), suffix, min(requested, counts[suffix]))


def _default_calibration_data(checkpoint_given: bool) -> str | None:
    if checkpoint_given:
        return None
    from pipeline.defaults import default_dataset

    return str(Path(default_dataset()) / "images")


@click.command()
@model_options
@click.option("--input-size", "--shape", "input_size",
              help="Network input: N, HxW or CxHxW (default: the model's default size). vamc compiles one "
                   "shape.")
@click.option("--precision", type=click.Choice(["fp16", "int8"]), default="int8", show_default=True,
              help="What vamc compiles to (backend.dtype).")
@click.option("--calibration", type=click.Choice(CALIBRATION_METHODS), default=DEFAULT_CALIBRATION,
              show_default=True,
              help="int8: vamc calibrate_mode (kl_* and entropy = kl_divergence, percentile, "
                                      "minmax = max).")
@click.option("--calibration-data", help="Folder of calibration images for vamc (int8; fp16 builds keep the "
                                         "dataset section too, with a placeholder path if none is given). "
                                         "Default with the built-in checkpoint: the built-in dataset's "
                                         "images.")
@click.option("--calibration-images", type=int, default=50, show_default=True,
              help="int8: how many images vamc calibrates on (the zoo uses 50; fewer if the folder has "
                   "fewer).")
@click.option("--out", "out_dir", default="export", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the .onnx, .yaml and -vdsp_params.json files.")
def export(out_dir: str, precision: str, calibration: str, calibration_data: str | None,
           calibration_images: int,
           input_size: str | None, **params: Any) -> None:
    """Write a model's ONNX file and the build configuration of Vastai's compiler (vamc) for it.

    The folder then holds <name>.onnx (fp32, opset 11, the static shape 1 x C x H x W with every constant
    computation folded, as the zoo exports its UNets), <name>.yaml (for `vamc compile`) and
    <name>-vdsp_params.json (the on-device pre-processing: RGB_PLANAR images, x / 255 at the network size;
    one-channel models get their grey plane replicated to the three planes by the vacc backend, as the zoo's
    one-channel runners do). With no --checkpoint, exports the built-in default model.

    \b
    Examples:
      unet-pipeline export --out export/
      unet-pipeline export -m bubbliiiing-vgg16 -c unet_vgg_voc.pth --input-size 256 \\
          --calibration-data VOCdevkit/VOC2012/JPEGImages --out export/
      cd export && vamc compile <name>.yaml
    """
    from pipeline.backends.vacc_files import default_vdsp_json
    from pipeline.defaults import default_checkpoint
    from pipeline.export.onnx import INPUT_NAME, difference_from_torch, export_static_onnx
    from pipeline.export.vamc import build_name, upsamples_on_dsp, vamc_config, vamc_yaml
    from pipeline.models import load_model

    checkpoint = params.get("checkpoint") or default_checkpoint()
    overrides = {key: params.get(key) for key in ("num_classes", "in_channels", "bilinear", "base_channels",
                                                 "conv_bias")}
    loaded = load_model(params.get("model"), checkpoint, **overrides)
    channels = loaded.in_channels
    shape = parse_shape(input_size, channels, option="--input-size") or (channels,
                                                                         *loaded.family.default_input_size)
    folder = calibration_data or _default_calibration_data(bool(params.get("checkpoint")))
    if precision == "int8" and folder is None:
        raise click.UsageError("--precision int8 needs --calibration-data FOLDER: the images vamc calibrates "
                               "on.")
    data = calibration_data_of(folder, calibration_images) if folder else None
    name = build_name(loaded.family.name, precision, calibration, shape)
    model = export_static_onnx(loaded, (shape[1], shape[2]))
    difference = difference_from_torch(loaded, model)
    if not difference <= 1e-3:
        raise ConfigError(f"The static ONNX export of {loaded.family.name} differs from torch by "
                          f"{difference:.3g} on a random input: report it with the model and --input-size.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.onnx").write_bytes(model.SerializeToString())
    config = vamc_config(name=name, onnx_file=f"./{name}.onnx", input_name=INPUT_NAME, shape=shape,
                         precision=precision, calibration=calibration, data=data,
                         dsp_upsampling=upsamples_on_dsp(model))
    try:
        text = vamc_yaml(config)
    except ImportError as err:
        raise ConfigError("Writing the vamc yaml needs PyYAML: pip install pyyaml.") from err
    (out / f"{name}.yaml").write_text(text)
    (out / f"{name}-vdsp_params.json").write_text(json.dumps(default_vdsp_json(*shape), indent=4) + "\n")
    click.echo(f"wrote {out / name}.onnx ({len(model.graph.node)} nodes, opset "
               f"{model.opset_import[0].version}, equal to torch within {difference:.1e}), .yaml and "
               "-vdsp_params.json")
    if data is not None and data.count < calibration_images:
        click.echo(f"note: {data.path} has {data.count} .{data.suffix} images, fewer than "
                   f"--calibration-images {calibration_images}: get_data_num is {data.count}")
    click.echo(f"compile:  cd {out} && vamc compile {name}.yaml")
    click.echo("then run: unet-pipeline score --backend vacc --vacc-model <the compiled model's prefix "
               f"under {out / 'deploy_weights'}> ...")
