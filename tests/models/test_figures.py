"""Model figures: parameter counts and FLOPs against the seed table, the seeds report and hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.errors import ConfigError, UnknownNameError
from pipeline.models import create_model
from pipeline.models.figures import count_flops, count_parameters, model_figures

SHAPE_512 = (3, 512, 512)
# The seed table (Vastai model-zoo page): parameters and FLOPs(G) at 3x512x512 ("-" for the Keras model).
SEED_PARAMETERS = {
    "milesial": 31_037_698,
    "bubbliiiing-vgg16": 24_892_437,
    "bubbliiiing-resnet50": 43_934_101,
    "zhixuhao": 31_031_685,
}
SEED_GFLOPS = {"milesial": 486.098, "bubbliiiing-vgg16": 502.875, "bubbliiiing-resnet50": 205.127}
# Measured by the seeds report by running the public tools on the upstream code (section 3.2).
FLOPCOUNTER_GFLOPS = {"milesial": 385.373, "bubbliiiing-vgg16": 450.972, "bubbliiiing-resnet50": 183.534}
THOP_X2_GFLOPS = {"milesial": 437.936, "bubbliiiing-vgg16": 452.310, "bubbliiiing-resnet50": 184.737}
# zhixuhao's layer table from the seeds report (kernel, in, out, spatial size at a 256x256 input).
ZHIXUHAO_CONVS_256 = [
    (3, 1, 64, 256), (3, 64, 64, 256), (3, 64, 128, 128), (3, 128, 128, 128), (3, 128, 256, 64),
    (3, 256, 256, 64), (3, 256, 512, 32), (3, 512, 512, 32), (3, 512, 1024, 16), (3, 1024, 1024, 16),
    (2, 1024, 512, 32), (3, 1024, 512, 32), (3, 512, 512, 32), (2, 512, 256, 64), (3, 512, 256, 64),
    (3, 256, 256, 64), (2, 256, 128, 128), (3, 256, 128, 128), (3, 128, 128, 128), (2, 128, 64, 256),
    (3, 128, 64, 256), (3, 64, 64, 256), (3, 64, 2, 256), (1, 2, 1, 256),
]


@pytest.mark.parametrize("name", list(SEED_PARAMETERS))
def test_parameters_match_the_seed_table(name: str) -> None:
    assert model_figures(name)["parameters"] == SEED_PARAMETERS[name]


def test_count_parameters_excludes_buffers_and_frozen_parameters() -> None:
    model = create_model("milesial")
    buffers = sum(b.numel() for b in model.buffers())
    assert buffers == 11_794  # BN statistics, listed in the seeds report, not parameters
    assert count_parameters(model) == 31_037_698
    model.inc.requires_grad_(False)
    frozen = sum(p.numel() for p in model.inc.parameters())
    assert count_parameters(model) == 31_037_698 - frozen


@pytest.mark.parametrize("name", list(FLOPCOUNTER_GFLOPS))
def test_2mac_matches_flopcountermode_figures(name: str) -> None:
    figures = model_figures(name, SHAPE_512)
    assert figures["convention"] == "2mac"
    assert figures["input_shape"] == SHAPE_512
    assert round(figures["gflops"], 3) == FLOPCOUNTER_GFLOPS[name]


@pytest.mark.parametrize("name", list(SEED_GFLOPS))
def test_seed_convention_reproduces_the_seed_table(name: str) -> None:
    figures = model_figures(name, SHAPE_512, convention="seed")
    assert round(figures["gflops"], 3) == SEED_GFLOPS[name]


@pytest.mark.parametrize("name", list(THOP_X2_GFLOPS))
def test_thop2_matches_the_measured_thop_figures(name: str) -> None:
    assert round(model_figures(name, SHAPE_512, convention="thop2")["gflops"], 3) == THOP_X2_GFLOPS[name]


def test_zhixuhao_2mac_equals_the_layer_table() -> None:
    figures = model_figures("zhixuhao")
    assert figures["input_shape"] == (1, 256, 256)
    expected = 2 * sum(k * k * cin * cout * size * size for k, cin, cout, size in ZHIXUHAO_CONVS_256)
    assert figures["gflops"] * 1e9 == pytest.approx(expected, abs=0.5)
    assert round(figures["gflops"], 1) == 109.2  # seeds report: 54.61 G MACs at 256x256x1


def _toy() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # out 4x8x8 = 256, 27 MACs each, + bias
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 2, 2, stride=2),  # in 256 elements x 2 x 4 = 2048 MACs; out 2x16x16 = 512
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),  # out 2x32x32 = 2048
        nn.MaxPool2d(2),  # 2x16x16
        nn.AdaptiveAvgPool2d(1),  # window 256 -> 2 outputs
        nn.Flatten(),
        nn.Linear(2, 5),  # 10 MACs
    )


def test_rules_by_hand_on_a_toy_network() -> None:
    model = _toy()
    # FlopCounterMode: convolutions (transposed: input side) and the linear layer, 2 per MAC.
    assert count_flops(model, (3, 8, 8)) == 2 * (6912 + 2048 + 10)
    # thop 0.1.1: conv 6912, BN 4 x 256, ConvT output side 512 x 4 x 4, bilinear 11 x 2048,
    # adaptive avg (256 + 1) x 2, linear 10.
    assert count_flops(model, (3, 8, 8), "thop2") == 2 * (6912 + 1024 + 8192 + 22528 + 514 + 10)
    # thop 0.0.31: conv + bias 256, BN 2 x 256, ConvT + bias 512, bilinear, avg, linear; then x 20/9.
    macs_0031 = (6912 + 256) + 512 + (8192 + 512) + 22528 + 514 + 10
    assert macs_0031 == 39436
    assert count_flops(model, (3, 8, 8), "seed") == round(macs_0031 * 20 / 9)


def test_nearest_upsampling_and_batch_dimension() -> None:
    model = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(1, 1, 1, bias=False))
    assert count_flops(model, (1, 4, 4), "thop2") == 2 * (64 + 64)  # 1 op per nearest output in thop 0.1.1
    assert count_flops(model, (1, 4, 4), "seed") == round(64 * 20 / 9)  # nearest is free in thop 0.0.31
    assert count_flops(model, (3, 1, 4, 4)) == 3 * count_flops(model, (1, 4, 4)) == 3 * 128


def test_meta_count_equals_a_real_cpu_forward_and_leaves_the_module_alone() -> None:
    model = create_model("milesial").train()
    model.inc.eval()  # mixed modes must come back as they were
    weight = model.inc.double_conv[0].weight
    before = weight.detach().clone()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 48))
    model.train()
    model.inc.eval()
    assert count_flops(model, (3, 64, 48)) == counter.get_total_flops()
    assert model.training and model.down1.training and not model.inc.training
    assert model.inc.double_conv[0].weight is weight and weight.device.type == "cpu"
    assert torch.equal(weight, before)


def test_model_figures_defaults_follow_the_config() -> None:
    figures = model_figures("milesial", in_channels=1, num_classes=1)
    assert figures["model"] == "milesial"
    assert figures["input_shape"] == (1, 512, 512)
    assert figures["parameters"] == 31_037_698 - 2 * 64 * 9 - 65
    assert figures["gflops"] < FLOPCOUNTER_GFLOPS["milesial"]


def test_errors_name_the_fix() -> None:
    model = nn.Conv2d(3, 3, 1)
    with pytest.raises(UnknownNameError, match="2mac.*seed|seed.*2mac"):
        count_flops(model, (3, 8, 8), "thop")
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        count_flops(model, (8, 8))
    with pytest.raises(ConfigError, match="multiples of 32"):
        model_figures("bubbliiiing-vgg16", (3, 500, 500))
