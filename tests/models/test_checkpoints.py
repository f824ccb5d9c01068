"""Checkpoint reading (torch, safetensors, Keras detection), safety, and load_model's mismatch report."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError, ConfigError
from pipeline.models import create_model, load_model
from pipeline.models.checkpoints import HDF5_MAGIC, read_checkpoint
from pipeline.models.loading import infer_family
from tests.models.checkpoint_files import write_safetensors

SMALL = {"base_channels": 4, "num_classes": 3}


@pytest.fixture(scope="module")
def small_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("milesial", **SMALL)
    for name, buf in model.named_buffers():  # non-trivial BN statistics, so a wrong load would show
        if name.endswith("running_mean"):
            buf.normal_()
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
    return model


def save(obj, path) -> str:
    torch.save(obj, path)
    return str(path)


def assert_same_weights(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    ref = reference.state_dict()
    got = module.state_dict()
    assert list(got) == list(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_plain_state_dict_roundtrip_infers_config(small_unet, tmp_path):
    path = save(small_unet.state_dict(), tmp_path / "m.pth")
    loaded = load_model(None, path)
    assert loaded.family.name == "milesial"
    assert loaded.config == {"in_channels": 3, "num_classes": 3, "bilinear": False, "base_channels": 4,
                             "conv_bias": False}
    assert_same_weights(loaded.module, small_unet)
    assert not loaded.module.training
    data = open(path, "rb").read()
    assert loaded.checkpoint.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.checkpoint.uri == path and loaded.checkpoint.metadata == {"format": "torch"}
    x = torch.rand(1, 3, 33, 47)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), small_unet.eval()(x))


def test_legacy_torch_serialization(small_unet, tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(small_unet.state_dict(), path, _use_new_zipfile_serialization=False)
    assert_same_weights(load_model("milesial", str(path)).module, small_unet)


@pytest.mark.parametrize("mask_values", [[0, 1], [0, 255], [[0, 0, 0], [255, 0, 0], [0, 255, 0]]])
def test_mask_values_kept_as_metadata(small_unet, tmp_path, mask_values):
    state = dict(small_unet.state_dict(), mask_values=mask_values)
    ckpt = read_checkpoint(save(state, tmp_path / "m.pth"))
    assert ckpt.metadata["mask_values"] == mask_values
    assert "mask_values" not in ckpt.state_dict
    loaded = load_model("milesial", ckpt)
    assert loaded.checkpoint.metadata["mask_values"] == mask_values


def test_bad_mask_values_are_reported(small_unet, tmp_path):
    path = save(dict(small_unet.state_dict(), mask_values="0,1"), tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="mask_values='0,1'; expected a non-empty list"):
        read_checkpoint(path)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"module." + k: v for k, v in sd.items()},
    lambda sd: {"_orig_mod.module." + k: v for k, v in sd.items()},
    lambda sd: {"state_dict": sd, "epoch": 7, "optimizer": {"lr": 0.1}},
    lambda sd: {"model_state_dict": {"module." + k: v for k, v in sd.items()}},
    lambda sd: {"net": sd},
    lambda sd: {"model": {"params": sd}},
])
def test_wrappers_and_prefixes_are_removed(small_unet, tmp_path, wrap):
    ckpt = read_checkpoint(save(wrap(small_unet.state_dict()), tmp_path / "m.pth"))
    assert list(ckpt.state_dict) == list(small_unet.state_dict())
    assert_same_weights(load_model("milesial", ckpt).module, small_unet)


def test_wrong_shapes_give_the_mismatch_report(small_unet, tmp_path):
    path = save(small_unet.state_dict(), tmp_path / "m.pth")
    with pytest.raises(CheckpointError) as err:
        load_model("milesial", path, num_classes=2)
    text = str(err.value)
    assert path in text
    assert "2 key(s) with another shape" in text
    assert "outc.conv.weight: file [3, 4, 1, 1] vs model [2, 4, 1, 1]" in text and "outc.conv.bias" in text
    assert "num_classes=3 milesial checkpoint" in text and "--num-classes 3" in text


def test_bilinear_override_contradicting_the_file(tmp_path):
    model = create_model("milesial", base_channels=4, bilinear=True)
    path = save(model.state_dict(), tmp_path / "bilinear.pth")
    assert load_model(None, path).config["bilinear"] is True
    with pytest.raises(CheckpointError) as err:
        load_model("milesial", path, bilinear=False)
    text = str(err.value)
    assert "8 key(s) missing from the file: up1.up.weight, up1.up.bias" in text
    assert "bilinear=True milesial checkpoint" in text and "drop the --no-bilinear override" in text


def test_report_caps_long_lists(small_unet, tmp_path):
    path = save(small_unet.state_dict(), tmp_path / "m.pth")
    with pytest.raises(CheckpointError) as err:
        load_model("milesial", path, conv_bias=True)
    text = str(err.value)
    assert "18 key(s) missing from the file" in text and "(and 8 more)" in text
    assert text.count(".bias") <= 12


def test_historic_conv_bias_file_loads(tmp_path):
    model = create_model("milesial", base_channels=4, bilinear=True, conv_bias=True, num_classes=1)
    loaded = load_model(None, save(model.state_dict(), tmp_path / "v1.pth"))
    assert loaded.config == {"in_channels": 3, "num_classes": 1, "bilinear": True, "base_channels": 4,
                             "conv_bias": True}
    assert_same_weights(loaded.module, model)


def test_bubbliiiing_file_detected_and_wrong_family_named(tmp_path):
    model = create_model("bubbliiiing-vgg16", num_classes=2)
    path = save(model.state_dict(), tmp_path / "best_epoch_weights.pth")
    loaded = load_model(None, path)
    assert loaded.family.name == "bubbliiiing-vgg16" and loaded.config == {"in_channels": 3, "num_classes": 2}
    assert_same_weights(loaded.module, model)
    with pytest.raises(CheckpointError, match="pick the model whose keys these are, --model bubbliiiing-vgg"):
        load_model("bubbliiiing-resnet50", path)
    with pytest.raises(CheckpointError, match=r"(?s)44 key\(s\) unexpected in the file.*--model bubbliiiing"):
        load_model("milesial", path)


def test_family_inference_from_keys():
    assert infer_family({"inc.double_conv.0.weight": 0}) == "milesial"
    assert infer_family({"vgg.features.0.weight": 0}) == "bubbliiiing-vgg16"
    assert infer_family({"resnet.conv1.weight": 0}) == "bubbliiiing-resnet50"
    assert infer_family({}, {"format": "keras-hdf5"}) == "zhixuhao"
    assert infer_family({"encoder.weight": 0}) is None


def test_undetectable_file_says_how_to_pass_model(tmp_path):
    path = save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="Cannot tell which model .* Pass --model NAME with one of: m"):
        load_model(None, path)
    torchvision_vgg = {"features.0.weight": torch.zeros(1), "classifier.0.weight": torch.zeros(1)}
    backbone = save(torchvision_vgg, tmp_path / "v.pth")
    with pytest.raises(CheckpointError, match="torchvision ImageNet vgg16 classifier"):
        load_model(None, backbone)


def test_unknown_override_lists_valid_keys(small_unet, tmp_path):
    path = save(small_unet.state_dict(), tmp_path / "m.pth")
    with pytest.raises(ConfigError, match="Unknown option.*n_classes.*Valid options: in_channels, num_clas"):
        load_model("milesial", path, n_classes=2)
    assert load_model("milesial", path, num_classes=None, bilinear=False).config["num_classes"] == 3


def test_missing_empty_truncated_and_junk_files(small_unet, tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth does not exist: check the path"):
        read_checkpoint(str(tmp_path / "nope.pth"))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth is empty \(0 bytes\)"):
        read_checkpoint(str(tmp_path / "empty.pth"))
    data = open(save(small_unet.state_dict(), tmp_path / "m.pth"), "rb").read()
    for cut in (len(data) // 2, len(data) - 10, 100):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.pth is truncated or corrupt.*fetch the file again"):
            read_checkpoint(str(tmp_path / "cut.pth"))
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint at all\n")
    with pytest.raises(CheckpointError, match=r"junk\.pth is not a checkpoint this pipeline reads"):
        read_checkpoint(str(tmp_path / "junk.pth"))
    with pytest.raises(CheckpointError, match="holds a dict with keys .*'epoch'.*not a state_dict"):
        read_checkpoint(save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth"))
    with pytest.raises(CheckpointError, match="holds list, not a state_dict"):
        read_checkpoint(save([torch.zeros(1)], tmp_path / "list.pth"))


class Trap:
    """Unpickling this calls open(marker, "w"): the marker file appears if the pickle ever runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_in_a_pickle_is_refused_and_never_runs(small_unet, tmp_path):
    # The trap is live: an unsafe unpickler creates its marker.
    live = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(Trap(str(live)))).close()
    assert live.exists()

    marker = tmp_path / "marker"
    zip_file = tmp_path / "evil.pth"
    torch.save({"inc.double_conv.0.weight": torch.zeros(1), "payload": Trap(str(marker))}, zip_file)
    raw_file = tmp_path / "evil-raw.pth"
    raw_file.write_bytes(pickle.dumps({"payload": Trap(str(marker))}, protocol=2))
    for path in (zip_file, raw_file):
        with pytest.raises(CheckpointError, match=r"holds code or Python objects other than tensors "
                                                  r"\(it references (io|builtins)\.open\).*"
                                                  r"torch\.save\(model\.state_dict\(\), path\)") as err:
            load_model(None, str(path))
        assert str(path) in str(err.value)
    assert not marker.exists()


def test_safetensors_roundtrip(small_unet, tmp_path):
    mixed = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1.5, -2.25], dtype=torch.float16),
        "c": torch.tensor([1.0, 3.140625], dtype=torch.bfloat16),
        "d": torch.tensor(7, dtype=torch.int64),
        "e": torch.tensor([True, False]),
        "f": torch.zeros(0, 4, dtype=torch.uint8),
    }
    (tmp_path / "mixed.safetensors").write_bytes(write_safetensors(mixed))
    got = read_checkpoint(str(tmp_path / "mixed.safetensors"))
    assert got.metadata == {"format": "safetensors"}
    assert set(got.state_dict) == set(mixed)
    for name, tensor in mixed.items():
        assert got.state_dict[name].dtype == tensor.dtype and torch.equal(got.state_dict[name], tensor)

    state = {"module." + k: v for k, v in small_unet.state_dict().items()}
    data = write_safetensors(state, {"mask_values": "[0, 255]"})
    (tmp_path / "unet.safetensors").write_bytes(data)
    loaded = load_model(None, str(tmp_path / "unet.safetensors"))
    assert loaded.checkpoint.metadata["mask_values"] == [0, 255]
    assert loaded.checkpoint.sha256 == hashlib.sha256(data).hexdigest()
    assert_same_weights(loaded.module, small_unet)

    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is truncated or corrupt"):
        read_checkpoint(str(tmp_path / "cut.safetensors"))


def test_safetensors_files_are_read_by_the_safetensors_library(tmp_path):
    """Files the library writes, in every dtype it and torch share (the unsigned ones included), read back
    exactly; a header that lies about a tensor's bytes is refused as corrupt."""
    from safetensors.torch import save

    tensors = {"w": torch.randn(3, 2), "u16": torch.tensor([1, 65535], dtype=torch.uint16),
               "u32": torch.tensor([4_000_000_000], dtype=torch.uint32), "f8": torch.zeros(2).to(
                   torch.float8_e4m3fn)}
    data = save(tensors, metadata={"mask_values": "[0, 1]"})
    (tmp_path / "lib.safetensors").write_bytes(data)
    got = read_checkpoint(str(tmp_path / "lib.safetensors"))
    assert got.metadata["mask_values"] == [0, 1] and set(got.state_dict) == set(tensors)
    for name, tensor in tensors.items():
        assert got.state_dict[name].dtype == tensor.dtype
        assert torch.equal(got.state_dict[name].view(torch.uint8), tensor.view(torch.uint8))
    header_len = int.from_bytes(data[:8], "little")
    lying = data[:8] + data[8:8 + header_len].replace(b'"u16"', b'"u1X"', 1) + data[8 + header_len:-2]
    (tmp_path / "bad.safetensors").write_bytes(lying)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors is truncated or corrupt"):
        read_checkpoint(str(tmp_path / "bad.safetensors"))


def test_keras_hdf5_is_detected_and_delegated(tmp_path, monkeypatch):
    seen = {}

    def fake_reader(data: bytes) -> dict[str, torch.Tensor]:
        seen["data"] = data
        return {"conv.weight": torch.ones(2)}

    from pipeline.models import MODELS
    from pipeline.models.checkpoints import KERAS_FORMAT

    family = dataclasses.replace(MODELS.get("zhixuhao"), converters={KERAS_FORMAT: fake_reader})
    monkeypatch.setitem(MODELS._items, "zhixuhao", family)  # the family that declares the format converts it
    data = HDF5_MAGIC + b"\x00" * 64
    (tmp_path / "unet_membrane.hdf5").write_bytes(data)
    ckpt = read_checkpoint(str(tmp_path / "unet_membrane.hdf5"))
    assert seen["data"] == data
    assert ckpt.metadata == {"format": "keras-hdf5"}
    assert torch.equal(ckpt.state_dict["conv.weight"], torch.ones(2))
    assert infer_family(ckpt.state_dict, ckpt.metadata) == "zhixuhao"


def test_torch_file_with_half_precision_loads_into_float32(small_unet, tmp_path):
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in small_unet.state_dict().items()}
    loaded = load_model("milesial", save(half, tmp_path / "half.pth"))
    weight = loaded.module.state_dict()["inc.double_conv.0.weight"]
    assert weight.dtype == torch.float32
    assert np.allclose(weight.numpy(), half["inc.double_conv.0.weight"].float().numpy())
