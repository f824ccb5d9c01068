"""Model figures: trainable parameters and FLOPs per input shape, under named counting conventions.

FLOPs are counted on the "meta" device: the forward pass runs on shape-only tensors, so counting a 512x512
UNet takes 0.03-0.1 s and never touches (or copies) real weights. Conventions (see docs/flops.md):

* ``"2mac"``: torch's ``FlopCounterMode``: convolutions (transposed ones on the input side, i.e. the true
  multiply-accumulates) and matmuls, 2 FLOPs per multiply-accumulate, nothing else.
* ``"thop2"``: 2 x the MACs of thop 0.1.1 (the current pip release), the convention of bubbliiiing's own
  ``summary.py`` ("Total GFLOPS").
* ``"seed"``: 20/9 x the MACs of thop 0.0.31 (the 2020 pip release); reproduces the seed table's FLOPs column
  (486.098 / 502.875 / 205.127 G at 3x512x512) to every digit shown.

The thop rules are re-implemented here from thop's documented counting rules (module forward hooks, one rule
per layer type; functional calls such as ``torch.cat``, ``F.pad`` and ``F.interpolate`` count nothing):

* Conv / ConvTranspose: out.numel * (Cin/groups * prod(kernel) + 1 if bias) [0.0.31];
  out.numel * Cin/groups * prod(kernel) [0.1.1].
* BatchNorm: 2 * numel [0.0.31]; 4 * numel, 2 * numel if not affine [0.1.1].
* Upsample modules, per output element: nearest 0 [0.0.31] / 1 [0.1.1]; linear 5; bilinear 11.
* Linear: in_features * out.numel. AvgPool: out.numel. AdaptiveAvgPool: (prod(in // out) + 1) * out.numel.
* LeakyReLU: numel [0.0.31]; 0 [0.1.1]. Everything else (ReLU, max-pool, dropout, padding): 0.
* Unlike thop (exact type match), subclasses of these layers are counted too.

Both thop versions count a transposed convolution on the *output* side (Cin x k x k per output element),
which for the k=2, s=2 up-convolutions of the milesial UNet is 4x the true multiply-accumulates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from pipeline.errors import ConfigError
from pipeline.models import MODELS, create_model
from pipeline.registry import Registry

# A rule maps (module, input tensor, output tensor) -> operation count for one call.
Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor], int]
UPSAMPLE_OPS_0031 = {"nearest": 0, "linear": 5, "bilinear": 11, "bicubic": 259, "trilinear": 31}
UPSAMPLE_OPS_011 = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 259, "trilinear": 31}
SEED_FACTOR = Fraction(20, 9)  # seed table FLOPs = 20/9 x thop-0.0.31 MACs (found by search, docs/flops.md)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameter elements (requires_grad=True); buffers such as BN statistics excluded."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------- thop rules
def _conv_macs(module: Any, x: torch.Tensor, y: torch.Tensor, with_bias: bool) -> int:
    per_output = x.shape[1] // module.groups * math.prod(module.kernel_size)
    if with_bias and module.bias is not None:
        per_output += 1
    return y.numel() * per_output


def _adaptive_avg_macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    window = math.prod(i // o for i, o in zip(x.shape[2:], y.shape[2:], strict=True))
    return (window + 1) * y.numel()


def _upsample_rule(ops_per_output: dict[str, int]) -> Rule:
    def rule(module: Any, x: torch.Tensor, y: torch.Tensor) -> int:
        return ops_per_output.get(module.mode, 0) * y.numel()
    return rule


def _bn_rule_011(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
    return 2 * x.numel() * (2 if affine else 1)


_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_AVG_TYPES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_AVG_TYPES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _linear_macs(module: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    return int(module.in_features * y.numel())


def _avg_macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return y.numel()


THOP_0031_RULES: tuple[tuple[tuple[type, ...], Rule], ...] = (
    (_CONV_TYPES, lambda m, x, y: _conv_macs(m, x, y, with_bias=True)),
    (_BN_TYPES, lambda m, x, y: 2 * x.numel()),
    ((nn.Upsample,), _upsample_rule(UPSAMPLE_OPS_0031)),
    ((nn.Linear,), _linear_macs),
    (_AVG_TYPES, _avg_macs),
    (_ADAPTIVE_AVG_TYPES, _adaptive_avg_macs),
    ((nn.LeakyReLU,), lambda m, x, y: x.numel()),
)
THOP_011_RULES: tuple[tuple[tuple[type, ...], Rule], ...] = (
    (_CONV_TYPES, lambda m, x, y: _conv_macs(m, x, y, with_bias=False)),
    (_BN_TYPES + (nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), _bn_rule_011),
    ((nn.Upsample,), _upsample_rule(UPSAMPLE_OPS_011)),
    ((nn.Linear,), _linear_macs),
    (_AVG_TYPES, _avg_macs),
    (_ADAPTIVE_AVG_TYPES, _adaptive_avg_macs),
)


def _rule_for(module: nn.Module, rules: tuple[tuple[tuple[type, ...], Rule], ...]) -> Rule | None:
    for types, rule in rules:
        if isinstance(module, types):
            return rule
    return None


# ------------------------------------------------------------------------------------------- meta forward
def _batch_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) not in (3, 4) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ConfigError(
            f"Expected an input shape (C, H, W) or (N, C, H, W) of positive integers, got {input_shape!r}. "
            "Pass e.g. (3, 512, 512).")
    return shape if len(shape) == 4 else (1, *shape)


@contextmanager
def _meta_call(module: nn.Module) -> Iterator[Callable[[torch.Tensor], Any]]:
    """Yield a function running `module` on meta tensors, without moving or copying its weights."""
    state = {name: torch.empty_like(t, device="meta")
             for name, t in (*module.named_parameters(), *module.named_buffers())}
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield lambda x: functional_call(module, state, (x,), strict=False, tie_weights=True)
    finally:
        for submodule, training in modes:
            submodule.training = training


def _count_2mac(module: nn.Module, shape: tuple[int, ...]) -> int:
    with _meta_call(module) as run:
        counter = FlopCounterMode(display=False)
        with counter:
            run(torch.zeros(shape, device="meta"))
    return int(counter.get_total_flops())


def _count_rules(module: nn.Module, shape: tuple[int, ...],
                 rules: tuple[tuple[tuple[type, ...], Rule], ...]) -> int:
    """Sum of the rules' counts over every call of every leaf module that has a rule (thop-style)."""
    total = 0

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        nonlocal total
        rule = _rule_for(mod, rules)
        if rule is not None and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            total += int(rule(mod, args[0], out))

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if not list(m.children()) and _rule_for(m, rules) is not None]
    try:
        with _meta_call(module) as run:
            run(torch.zeros(shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return total


def _count_thop2(module: nn.Module, shape: tuple[int, ...]) -> int:
    return 2 * _count_rules(module, shape, THOP_011_RULES)


def _count_seed(module: nn.Module, shape: tuple[int, ...]) -> int:
    return round(_count_rules(module, shape, THOP_0031_RULES) * SEED_FACTOR)


FLOP_CONVENTIONS: Registry[Callable[[nn.Module, tuple[int, ...]], int]] = Registry("FLOP convention")
FLOP_CONVENTIONS.register("2mac", _count_2mac)
FLOP_CONVENTIONS.register("thop2", _count_thop2)
FLOP_CONVENTIONS.register("seed", _count_seed)


def count_flops(module: nn.Module, input_shape: tuple[int, ...], convention: str = "2mac") -> int:
    """FLOPs of one forward pass of `module` on a float32 input of `input_shape`, under `convention`.

    The pass runs on the meta device (shapes only), in eval mode; the module's weights, mode and device are
    left as they were.

    Args:
        module: the network.
        input_shape: (C, H, W) (batch 1 is assumed) or (N, C, H, W).
        convention: "2mac", "thop2" or "seed" (see the module docstring).

    Raises:
        UnknownNameError: unknown convention. ConfigError: malformed shape, or one the model rejects.
    """
    counter = FLOP_CONVENTIONS.get(convention)
    return counter(module, _batch_shape(input_shape))


def _build_on_meta(name: str, config: dict[str, Any]) -> nn.Module:
    """The model with shape-only weights; on the CPU if its constructor cannot run on the meta device."""
    try:
        with torch.device("meta"):
            return create_model(name, **config)
    except NotImplementedError:
        return create_model(name, **config)


def default_input_shape(name: str, module: nn.Module | None = None, **config: Any) -> tuple[int, int, int]:
    """(C, H, W) the figures use by default: the family's default_input_size with the model's in_channels."""
    family = MODELS.get(name.strip().lower())
    channels = getattr(module, "in_channels", None)
    if not isinstance(channels, int):
        channels = config.get("in_channels") or family.default_config.get("in_channels", 3)
    height, width = family.default_input_size
    return int(channels), int(height), int(width)


def model_figures(name: str, input_shape: tuple[int, int, int] | None = None, *, convention: str = "2mac",
                  **config: Any) -> dict[str, Any]:
    """Parameters and GFLOPs of a registered model (built with random weights on the meta device).

    Args:
        name: registry name, e.g. "milesial".
        input_shape: (C, H, W); default: the family's default_input_size with the model's input channels.
        convention: FLOP convention ("2mac", "thop2", "seed").
        **config: model options passed to `create_model` (e.g. num_classes=2).

    Returns:
        {"model": name, "parameters": int, "gflops": float (FLOPs / 1e9), "convention": str,
        "input_shape": (C, H, W)}.
    """
    FLOP_CONVENTIONS.get(convention)  # fail on a bad name before building anything
    module = _build_on_meta(name, config)
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(name, module, **config)
    flops = count_flops(module, shape, convention)
    return {
        "model": name,
        "parameters": count_parameters(module),
        "gflops": flops / 1e9,
        "convention": convention,
        "input_shape": shape,
    }
