"""The torch backend sets torch's process-wide intra-op thread count for its life only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import cpu_features
from pipeline.backends import BackendSpec, create_backend
from pipeline.errors import CheckpointError, ConfigError
from pipeline.models import create_model
from pipeline.processing.base import to_network_input


def test_threads_are_set_for_the_backends_life_and_put_back_on_close(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(create_model("milesial", base_channels=4).state_dict(), path)
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    backend = create_backend(BackendSpec(name="torch", model="milesial", checkpoint=str(path),
                                         threads=wanted),
                             to_network_input)
    try:
        assert torch.get_num_threads() == wanted
        assert backend.run(np.zeros((1, 16, 16, 3), np.uint8)).shape == (1, 2, 16, 16)
    finally:
        backend.close()
    assert torch.get_num_threads() == before
    backend.close()  # idempotent, and does not touch the count again
    assert torch.get_num_threads() == before


def test_a_backend_that_fails_to_build_leaves_threads_alone(tmp_path):
    before = torch.get_num_threads()
    spec = BackendSpec(name="torch", model="milesial", checkpoint=str(tmp_path / "missing.pth"),
                       threads=before + 1)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_backend(spec, to_network_input)
    assert torch.get_num_threads() == before


NATIVE_BF16 = cpu_features.detect().bf16


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has neither avx512_bf16 nor amx_bf16 (checked with "
                                            "pipeline.cpu_features): bf16 is refused here, as the next test "
                                            "checks")
def test_bf16_convolves_in_bfloat16_close_to_fp32(tmp_path):
    path = tmp_path / "small.pth"
    torch.manual_seed(0)
    torch.save(create_model("milesial", base_channels=8, num_classes=3).state_dict(), path)
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    spec = BackendSpec(name="torch", model="milesial", checkpoint=str(path), threads=1)
    reference = create_backend(spec, to_network_input)
    bf16 = create_backend(dataclasses.replace(spec, precision="bf16"), to_network_input)
    seen: list[torch.dtype] = []
    conv = bf16.loaded.module.inc.double_conv[0]  # type: ignore[attr-defined]
    hook = conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        exact, got = reference.run(images), bf16.run(images)
    finally:
        hook.remove()
        bf16.close()  # last built, first closed: each puts back the thread count it found
        reference.close()
    assert seen == [torch.bfloat16] and got.dtype == np.float32  # bf16 maths, float32 out
    error = float(np.abs(got - exact).max() / np.abs(exact).max())
    agreement = float((got.argmax(1) == exact.argmax(1)).mean())
    print(f"bf16 vs fp32: max relative error {error:.2e}, arg-max agreement {agreement:.4f}")
    assert 0 < error < 0.05 and agreement > 0.97


def test_bf16_is_refused_where_the_cpu_lacks_it(tmp_path, monkeypatch):
    from pipeline.backends import torch_backend
    from pipeline.config import BackendConfig

    path = tmp_path / "tiny.pth"
    torch.save(create_model("milesial", base_channels=4).state_dict(), path)
    amd_avx2 = cpu_features.CpuFeatures.from_flags(["avx2", "fma"], "AMD EPYC 7B12")
    monkeypatch.setattr(cpu_features, "detect", lambda *a: amd_avx2)
    with pytest.raises(ConfigError, match=r"avx512_bf16 or amx_bf16.*AMD EPYC 7B12.*--precision fp32") as err:
        torch_backend.ENTRY.check(BackendConfig(precision="bf16"), None)  # the driver, before Ray starts
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="avx512_bf16"):  # the actor, on its own node
        create_backend(BackendSpec(name="torch", model="milesial", checkpoint=str(path), precision="bf16"),
                       to_network_input)
    torch_backend.ENTRY.check(BackendConfig(precision="fp32"), None)  # other precisions need nothing
