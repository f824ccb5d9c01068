"""`--backend auto`: ONNX Runtime fp32 where a probe shows it gives torch's masks, else torch; recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import factories
import numpy as np
import pytest
from reference_weights import write_deterministic_checkpoint

from pipeline.backends import BACKENDS, BackendSpec, PrepareContext, auto, create_backend, prepare_backend
from pipeline.config import BackendConfig, RunConfig
from pipeline.errors import ConfigError
from pipeline.metrics.ties import DecisionDiff, compare_logits
from pipeline.processing.base import to_network_input


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return write_deterministic_checkpoint(tmp_path_factory.mktemp("auto") / "milesial.pth", "milesial",
                                          num_classes=4, in_channels=3, base_channels=8, bilinear=False)


def _images(count: int = 3) -> list[np.ndarray]:
    return [np.asarray(im.resize((64, 48))) for _, im, _ in factories.samples(count, first=900)]


def _context(tmp_path: Path, images: list[np.ndarray]) -> PrepareContext:
    return PrepareContext(settings=BackendConfig(), to_network_input=to_network_input,
                          sample_images=lambda n: images[:n], cache_dir=str(tmp_path / "cache"))


def _spec(checkpoint: str, **changes) -> BackendSpec:
    return BackendSpec(name="auto", model="milesial", checkpoint=checkpoint, threads=1, **changes)


def test_the_default_backend_is_auto():
    assert BackendConfig().name == "auto" and "auto" in BACKENDS


def test_compare_logits_tells_near_ties_from_mismatches():
    reference = np.zeros((2, 1, 3), np.float32)
    reference[1] = [[1e-6, 0.5, -0.5]]  # pixel 0: a near tie (gap 1e-6); pixels 1, 2: clear decisions
    got = reference.copy()
    got[1, 0, 0] = -1e-6  # flips the near tie
    assert compare_logits(got, reference) == DecisionDiff(3, 1, 0, pytest.approx(2e-6))
    got[1, 0, 1] = -0.1  # flips a clear decision
    diff = compare_logits(got, reference)
    assert (diff.near_ties, diff.mismatches) == (1, 1)


def test_auto_picks_onnx_here_and_caches_the_probe(checkpoint, tmp_path, monkeypatch):
    images = _images()
    chosen = prepare_backend(_spec(checkpoint), _context(tmp_path, images))
    assert chosen.name == "onnx" and Path(chosen.options["onnx_path"]).is_file()
    assert "gives torch's masks" in chosen.options["auto_reason"]
    probes = list((tmp_path / "cache" / auto.PROBE_FOLDER).glob("*.json"))
    assert len(probes) == 1 and json.loads(probes[0].read_text())["diff"]["mismatches"] == 0
    backend = create_backend(chosen, to_network_input)  # what the actors build: onnxruntime
    try:
        assert backend.name == "onnx" and backend.run(np.stack(images)).shape == (3, 4, 48, 64)
    finally:
        backend.close()

    def no_probe(*args, **kwargs):
        raise AssertionError("the cached verdict must be reused")

    monkeypatch.setattr(auto, "probe", no_probe)
    again = prepare_backend(_spec(checkpoint), _context(tmp_path, images))
    assert again.name == "onnx" and again.options["auto_reason"] == chosen.options["auto_reason"]
    with pytest.raises(ConfigError, match="prepare_backend"):
        create_backend(_spec(checkpoint), to_network_input)


def test_auto_falls_back_to_torch_without_onnxruntime(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    choice = auto.choose(_spec(checkpoint), _context(tmp_path, _images()))
    assert choice.name == "torch" and choice.spec.name == "torch"
    assert "onnxruntime is not installed" in choice.reason and "pip install onnxruntime" in choice.reason
    assert choice.spec.options["auto_reason"] == choice.reason


def test_auto_runs_torch_where_onnx_differs_and_on_cuda(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "probe", lambda *a, **k: DecisionDiff(3 * 48 * 64, 0, 17, 0.3))
    choice = auto.choose(_spec(checkpoint), _context(tmp_path, _images()))
    assert choice.name == "torch" and "differs from torch on 17 pixel(s)" in choice.reason
    cuda = auto.choose(_spec(checkpoint, device="cuda"), _context(tmp_path, _images()))
    assert cuda.name == "torch" and "GPU" in cuda.reason
    int8 = auto.choose(_spec(checkpoint, precision="int8"), _context(tmp_path, _images()))
    assert int8.name == "onnx" and int8.spec.options["int8_weight_bits"] in (7, 8)


@pytest.mark.integration
def test_a_run_records_the_choice_and_resume_compares_the_backend_that_ran(ray_session, checkpoint,
                                                                          tmp_path, monkeypatch, capsys):
    from pipeline.cli.run_commands import print_summary
    from pipeline.cpu_features import detect
    from pipeline.run import run

    items = [(f"img{i}", *factories.make_sample_pair(950 + i, (64, 48))) for i in range(4)]
    dataset = factories.write_pairs(tmp_path / "data", items)
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))

    def config(output: str, **changes) -> RunConfig:
        return RunConfig.create(input=str(dataset), output=str(tmp_path / output), checkpoint=checkpoint,
                                model="milesial", scale=1.0, num_cpus_per_actor=0.5, concurrency=1,
                                progress=False, report=False, **changes)

    first = run(config("auto")).metrics
    assert first["backend"]["name"] == "onnx" and first["backend"]["requested"] == "auto"
    assert "gives torch's masks" in first["backend"]["auto_reason"]
    assert first["config"]["backend"] == "onnx"  # the backend that ran, as settings.json records it
    assert json.loads((tmp_path / "auto" / "_run" / "settings.json").read_text())["backend"] == "onnx"
    assert first["cpu"] == detect().to_json()
    print_summary(first, str(tmp_path / "auto"))
    printed = capsys.readouterr().out.splitlines()
    assert f"backend onnx fp32 ({first['backend']['auto_reason']})" in printed
    assert detect().describe() in printed
    again = run(config("auto", backend="onnx", resume=True)).metrics  # the same backend by name
    assert again["miou"] == first["miou"]
    with pytest.raises(ConfigError, match="backend: 'onnx' -> 'torch'"):
        run(config("auto", backend="torch", resume=True))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match="backend: 'onnx' -> 'torch'"):  # auto would pick torch now
        run(config("auto", resume=True))
    fallback = run(config("no-onnx")).metrics
    assert fallback["backend"]["name"] == "torch" and fallback["backend"]["requested"] == "auto"
    assert "onnxruntime is not installed" in fallback["backend"]["auto_reason"]
    assert fallback["miou"] == pytest.approx(first["miou"], abs=1e-9)


def test_a_pool_serves_the_same_model_whatever_its_preparation_says():
    """`auto`/onnx specs carry a new object-store reference and cache-hit flag each run; a kept pool's actors
    must not rebuild the backend for the same model (tests/pipeline/test_streaming.py measures the effect)."""
    first = BackendSpec(name="onnx", options={"onnx_sha256": "a", "onnx_model_ref": 1,
                                              "onnx_cache_hit": False, "onnx_build_seconds": 3.2})
    again = BackendSpec(name="onnx", options={"onnx_sha256": "a", "onnx_model_ref": 2, "onnx_cache_hit": True,
                                              "onnx_build_seconds": 0.1})
    other = BackendSpec(name="onnx", options={"onnx_sha256": "b", "onnx_model_ref": 2})
    assert first.identity() == again.identity()
    assert first.identity() != other.identity()
