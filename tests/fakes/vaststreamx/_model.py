"""A "compiled model": the fake-compiled file suite, loaded onto the calling thread's die."""

from __future__ import annotations

import io
import json
import os
import weakref

import numpy as np
import torch

from vaststreamx._device import require_device

SIDECAR_KEY = "vsx_fake"
_live_models: weakref.WeakSet = weakref.WeakSet()


def fake_live_models() -> int:
    """How many Model objects are still alive in this process (0 once every owner dropped them)."""
    return len(_live_models)


class Model:
    """`Model(model_prefix, batch_size=1, hw_config="")`: `<prefix>.so/.json/.params` must exist.

    `<prefix>.json` holds, under "vsx_fake": "model" (a pipeline.models registry name), "model_config",
    "input_shape" [1, c, H, W], "output_shape" [1, C, H, W], "max_batch_size" and, for int8 models,
    "activation_thresholds" {module name: T}; `<prefix>.params` holds the weights as a torch state dict.
    `batch_size` reads back min(requested, max_batch_size).

    int8: the input of every module named in activation_thresholds (each Conv2d and ConvTranspose2d) is
    fake-quantized per tensor, symmetric int8: x -> clamp(round(x / s), -127, 127) * s with s = T / 127
    (float32; round half to even), s = float32(T / 127).
    """

    def __init__(self, model_prefix: str, batch_size: int = 1, hw_config: str = "") -> None:
        self.device_id = require_device("Model()")
        missing = [model_prefix + s for s in (".so", ".json",
                                              ".params") if not os.path.isfile(model_prefix + s)]
        if missing:
            raise RuntimeError(f"Model(): cannot open {', '.join(missing)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise RuntimeError(f"Model(): batch_size must be a positive int, got {batch_size!r}")
        try:
            with open(model_prefix + ".json", encoding="utf-8") as f:
                sidecar = json.load(f)[SIDECAR_KEY]
            self.input_shape = [tuple(int(v) for v in sidecar["input_shape"])]
            self.output_shape = [tuple(int(v) for v in sidecar["output_shape"])]
            self.max_batch_size = int(sidecar["max_batch_size"])
            with open(model_prefix + ".params", "rb") as f:
                state = torch.load(io.BytesIO(f.read()), weights_only=True)
            from pipeline.models import create_model

            network = create_model(sidecar["model"], **sidecar["model_config"])
            network.load_state_dict(state, strict=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            raise RuntimeError(f"Model(): {model_prefix} is not a fake-compiled model ({err})") from err
        self._network = network.float().eval()
        modules = dict(self._network.named_modules())
        for name, threshold in sidecar.get("activation_thresholds", {}).items():
            modules[name].register_forward_pre_hook(_activation_quantizer(float(threshold)))
        self.batch_size = min(batch_size, self.max_batch_size)
        self.input_count = self.output_count = 1
        _live_models.add(self)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """One (c, H, W) float16 input -> (1, C, H, W) float16 (see the package docstring, "Numerics").

        A one-channel model takes the op's three planes only when they are equal (the vendor's one-channel
        runners replicate the channel; how the device maps three planes onto one channel is undocumented), and
        gets the first.
        """
        expected = self.input_shape[0][1:]
        if expected[0] == 1 and x.ndim == 3 and x.shape[0] == 3:
            if not (np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])):
                raise RuntimeError("a one-channel model got three different planes: feed RGB_PLANAR images "
                                   "with the grey plane replicated, as the zoo's one-channel runners do")
            x = x[:1]
        if x.shape != expected or x.dtype != np.float16:
            raise RuntimeError(f"the model takes float16 {expected} inputs, the pre-processing op gave "
                               f"{x.dtype} {x.shape}: the VDSP JSON does not fit this model")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                y = self._network(torch.from_numpy(x.astype(np.float32))[None])
        finally:
            torch.set_num_threads(threads)
        if tuple(y.shape) != self.output_shape[0]:
            raise RuntimeError(f"the network gave {tuple(y.shape)}, the model's output_shape is "
                               f"{self.output_shape[0]}")
        return y.numpy().astype(np.float16)


def _activation_quantizer(threshold: float):
    scale = torch.tensor(threshold / 127 if threshold > 0 else 1.0, dtype=torch.float32)

    def hook(module, inputs):
        return (torch.round(inputs[0] / scale).clamp(-127, 127) * scale, *inputs[1:])

    return hook


class ModelOperator:
    def __init__(self, model: Model) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"ModelOperator(): expected a vaststreamx.Model, got {type(model).__name__}")
        self.model = model
