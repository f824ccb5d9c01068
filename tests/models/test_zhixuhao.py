"""zhixuhao Keras UNet port: architecture, Keras HDF5 reading, and outputs against a numpy Keras reference.

The reference below is written in Keras' own convention (channels-last, kernels (kh, kw, in, out), 'same'
padding per Keras' rule, nearest up-sampling, concatenate([encoder, decoder], axis=-1)) in numpy float64,
reading the arrays straight out of the HDF5 file by their Keras names. It shares no code with the port.
"""

from __future__ import annotations

import io
import sys

import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import CheckpointError, ConfigError, InputError
from pipeline.models import MODELS, create_model, load_model
from pipeline.models.zhixuhao import KerasSameConv2d, config_from_state_dict, state_dict_from_keras_file
from tests.models.keras_files import keras_weights, read_conv_arrays, write_keras_h5

TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------- numpy Keras reference

KERAS_SAME_PAD = {1: (0, 0), 2: (0, 1), 3: (1, 1)}  # (before, after) for stride 1


def np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray,
            pad: dict[int, tuple[int, int]]) -> np.ndarray:
    """Keras Conv2D(padding='same'), channels-last: (H, W, C) x (k, k, C, O) -> (H, W, O) float64."""
    k = kernel.shape[0]
    before, after = pad[k]
    xp = np.pad(x, ((before, after), (before, after), (0, 0)))
    windows = sliding_window_view(xp, (k, k), axis=(0, 1))  # (H, W, C, k, k)
    h, w, c = x.shape
    cols = windows.transpose(0, 1, 3, 4, 2).reshape(h * w, k * k * c)
    return (cols @ kernel.astype(np.float64).reshape(k * k * c, -1) + bias).reshape(h, w, -1)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def keras_unet_reference(image: np.ndarray, convs: list[tuple[np.ndarray, np.ndarray]],
                         pad: dict[int, tuple[int, int]] = KERAS_SAME_PAD) -> tuple[np.ndarray, np.ndarray]:
    """zhixuhao's unet() forward pass in numpy: (H, W, C) -> (conv1 block (H, W, 64), output (H, W, 1))."""
    it = iter(convs)

    def conv(x: np.ndarray) -> np.ndarray:
        return relu(np_conv(x, *next(it), pad))

    def pool(x: np.ndarray) -> np.ndarray:
        h, w, c = x.shape
        return x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))

    def upsample(x: np.ndarray) -> np.ndarray:
        return x.repeat(2, axis=0).repeat(2, axis=1)

    x = image.astype(np.float64)
    conv1 = conv(conv(x))
    conv2 = conv(conv(pool(conv1)))
    conv3 = conv(conv(pool(conv2)))
    drop4 = conv(conv(pool(conv3)))
    drop5 = conv(conv(pool(drop4)))
    conv6 = conv(conv(np.concatenate([drop4, conv(upsample(drop5))], axis=-1)))
    conv7 = conv(conv(np.concatenate([conv3, conv(upsample(conv6))], axis=-1)))
    conv8 = conv(conv(np.concatenate([conv2, conv(upsample(conv7))], axis=-1)))
    conv9 = conv(conv(conv(np.concatenate([conv1, conv(upsample(conv8))], axis=-1))))
    kernel, bias = next(it)
    out = 1.0 / (1.0 + np.exp(-np_conv(conv9, kernel, bias, pad)))
    return conv1, out


def torch_outputs(model: torch.nn.Module, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The port's conv1 block and output for an (H, W, C) image, channels-last numpy."""
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        block = model.encode_first_block(x)[0].permute(1, 2, 0).numpy()
        out = model(x)[0].permute(1, 2, 0).numpy()
    return block, out


@pytest.fixture(scope="module")
def weights_1ch() -> list[tuple[np.ndarray, np.ndarray]]:
    return keras_weights(in_channels=1, seed=0)


@pytest.fixture(scope="module")
def model_file(weights_1ch) -> bytes:
    return write_keras_h5(weights_1ch, layout="model", naming="keras2")


# ------------------------------------------------------------------------------------------- architecture

def test_parameter_count_matches_seed_table():
    family = MODELS.get("zhixuhao")
    model = create_model("zhixuhao")
    assert sum(p.numel() for p in model.parameters()) == 31_031_685 == family.seed_parameters
    rgb = create_model("zhixuhao", in_channels=3)
    assert sum(p.numel() for p in rgb.parameters()) == 31_031_685 + 2 * 9 * 64
    assert len(model.state_dict()) == 48
    assert list(model.state_dict())[:2] == ["conv1a.weight", "conv1a.bias"]
    assert list(model.state_dict())[-2:] == ["conv10.weight", "conv10.bias"]


def test_registry_entry():
    family = MODELS.get("zhixuhao")
    assert family.source == "zhixuhao/unet@b45af4d"
    assert family.backbone == "-"
    assert dict(family.default_config) == {"in_channels": 1, "num_classes": 1}
    assert family.default_processing == "zhixuhao"
    assert family.default_input_size == (256, 256)
    assert family.input_divisor == 16
    assert family.output_kind == "probabilities"


def test_input_checks_say_what_to_do():
    model = create_model("zhixuhao")
    with pytest.raises(ConfigError, match=r"multiples of 16, got 40x32\. .*e\.g\. 48x32"):
        model(torch.zeros(1, 1, 40, 32))
    with pytest.raises(InputError, match=r"Expected a \(N, 1, H, W\) batch, got shape \(1, 3, 32, 32\)"):
        model(torch.zeros(1, 3, 32, 32))


def test_config_errors():
    with pytest.raises(ConfigError, match=r"num_classes=1 .* got 2\..*threshold"):
        create_model("zhixuhao", num_classes=2)
    with pytest.raises(ConfigError, match="in_channels to be a positive integer"):
        create_model("zhixuhao", in_channels=0)


def test_config_from_state_dict():
    assert config_from_state_dict(create_model("zhixuhao", in_channels=3).state_dict()) == {"in_channels": 3}
    assert config_from_state_dict({"inc.double_conv.0.weight": torch.zeros(64, 3, 3, 3)}) == {}


def test_keras_same_padding_of_a_2x2_conv_goes_bottom_right():
    conv = KerasSameConv2d(1, 1, kernel_size=2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
        conv.bias.zero_()
        out = conv(torch.tensor([[[[1.0, 10.0], [100.0, 1000.0]]]]))
    # out[i, j] = sum_kl w[k, l] * x[i + k, j + l], zeros past the bottom/right edge (Keras 'same', k even)
    assert out[0, 0].tolist() == [[1 + 20 + 300 + 4000, 10 + 3000], [100 + 2000, 1000]]
    assert conv.padding == (0, 0)


# ------------------------------------------------------------------------------------- Keras file reading

def test_full_model_file_matches_numpy_keras_reference(model_file, tmp_path):
    path = tmp_path / "unet_membrane.hdf5"
    path.write_bytes(model_file)
    loaded = load_model(None, str(path))  # detected as zhixuhao by the HDF5 signature
    assert loaded.family.name == "zhixuhao"
    assert loaded.config == {"in_channels": 1, "num_classes": 1}
    image = np.random.default_rng(1).random((32, 32, 1))
    ref_block, ref_out = keras_unet_reference(image, read_conv_arrays(model_file))
    block, out = torch_outputs(loaded.module, image)
    block_diff, out_diff = np.abs(block - ref_block).max(), np.abs(out - ref_out).max()
    print(f"full-model file: conv1 block max|diff| {block_diff:.3g}, output max|diff| {out_diff:.3g}, "
          f"output range {ref_out.min():.3f}..{ref_out.max():.3f}")
    assert block_diff < TOLERANCE * max(1.0, np.abs(ref_block).max())
    assert out_diff < TOLERANCE
    assert ref_out.max() - ref_out.min() > 0.05  # the comparison is not between two constant maps


def test_reference_is_sensitive_to_the_2x2_padding_side(model_file):
    """A port that padded the 2x2 convs top/left would be caught by the comparison above."""
    image = np.random.default_rng(1).random((32, 32, 1))
    convs = read_conv_arrays(model_file)
    _, right = keras_unet_reference(image, convs)
    _, left = keras_unet_reference(image, convs, pad={**KERAS_SAME_PAD, 2: (1, 0)})
    assert np.abs(right - left).max() > 100 * TOLERANCE


def test_weights_only_file_with_tf_keras_names_and_three_channels():
    weights = keras_weights(in_channels=3, seed=2)
    data = write_keras_h5(weights, layout="weights", naming="tf", split_layer_names=True)
    state = state_dict_from_keras_file(data)
    assert config_from_state_dict(state) == {"in_channels": 3}
    model = create_model("zhixuhao", in_channels=3)
    model.load_state_dict(state, strict=True)
    image = np.random.default_rng(3).random((32, 48, 3))
    ref_block, ref_out = keras_unet_reference(image, read_conv_arrays(data, naming="tf"))
    block, out = torch_outputs(model.eval(), image)
    block_diff, out_diff = np.abs(block - ref_block).max(), np.abs(out - ref_out).max()
    print(f"weights-only tf.keras file: conv1 block max|diff| {block_diff:.3g}, "
          f"output max|diff| {out_diff:.3g}")
    assert block_diff < TOLERANCE * max(1.0, np.abs(ref_block).max())
    assert out_diff < TOLERANCE


def test_kernels_are_permuted_to_torch_layout(weights_1ch, model_file):
    state = state_dict_from_keras_file(model_file)
    kernel, bias = weights_1ch[11]  # conv6a: (3, 3, 1024, 512)
    assert tuple(state["conv6a.weight"].shape) == (512, 1024, 3, 3)
    assert state["conv6a.weight"][7, 5, 2, 1].item() == kernel[2, 1, 5, 7]
    assert np.array_equal(state["conv6a.bias"].numpy(), bias)
    assert all(t.dtype == torch.float32 for t in state.values())


def test_theano_backend_kernels_are_flipped(weights_1ch):
    state = state_dict_from_keras_file(write_keras_h5(weights_1ch, layout="weights", backend="theano"))
    kernel = weights_1ch[0][0]  # (3, 3, 1, 64)
    assert state["conv1a.weight"][4, 0, 0, 0].item() == kernel[2, 2, 0, 4]
    assert state["conv1a.weight"][4, 0, 0, 1].item() == kernel[2, 1, 0, 4]


def test_wrong_number_of_conv_layers_is_refused(weights_1ch):
    data = write_keras_h5(weights_1ch[:23])
    with pytest.raises(CheckpointError, match=r"Expected 24 Conv2D layers .* got 23 weighted layers"):
        state_dict_from_keras_file(data)


def test_mismatched_kernel_shape_names_the_layer(weights_1ch):
    weights = list(weights_1ch)
    weights[-1] = (np.zeros((1, 1, 2, 3), np.float32), np.zeros(3, np.float32))  # a 3-class head
    data = write_keras_h5(weights, naming="tf")
    with pytest.raises(CheckpointError, match=(r"Keras layer 'conv2d_23' \(Conv2D #24, our 'conv10'\) "
                                               r"has kernel "
                                               r"\[1, 1, 2, 3\] .* needs kernel \[1, 1, 2, 1\]")):
        state_dict_from_keras_file(data)


def test_non_conv_weighted_layer_is_refused():
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as root:
        root.attrs["layer_names"] = np.array([f"l{i}".encode() for i in range(24)])
        for i in range(24):
            group = root.create_group(f"l{i}")
            names = [f"l{i}/gamma:0", f"l{i}/beta:0"] if i == 1 else [f"l{i}/kernel:0", f"l{i}/bias:0"]
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
            group.create_dataset(names[0], data=np.zeros((3, 3, 1, 64) if i != 1 else (64,), np.float32))
            group.create_dataset(names[1], data=np.zeros(64, np.float32))
    expected = r"Keras layer 'l1' .*holds l1/gamma:0 \[64\], l1/beta:0 \[64\]"
    with pytest.raises(CheckpointError, match=expected):
        state_dict_from_keras_file(buffer.getvalue())


def test_hdf5_that_is_not_a_keras_file_is_refused():
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as root:
        root.create_dataset("layers/conv2d/vars/0", data=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"Keras 3 `\.weights\.h5` file .* re-save"):
        state_dict_from_keras_file(buffer.getvalue())


def test_missing_h5py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(CheckpointError, match=r"pip install h5py"):
        state_dict_from_keras_file(b"\x89HDF\r\n\x1a\n")


def test_truncated_file_is_refused(model_file):
    with pytest.raises(CheckpointError, match=r"not a readable HDF5 file .*truncated.* Fetch it again"):
        state_dict_from_keras_file(model_file[: len(model_file) // 2])
