"""The onnx backend: export per family, fp16 emulation, int8 QDQ, the backend itself, real pipeline runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import factories
import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from reference_weights import write_deterministic_checkpoint

from pipeline import cpu_features
from pipeline.backends import BackendSpec, PrepareContext, create_backend, prepare_backend
from pipeline.config import BackendConfig, RunConfig
from pipeline.cpu_features import CpuFeatures
from pipeline.errors import ConfigError
from pipeline.export.onnx import export_onnx
from pipeline.models import MODELS, LoadedModel, create_model, load_model
from pipeline.models.checkpoints import CheckpointInfo
from pipeline.quantize import calibration
from pipeline.quantize.fp16 import emulate_fp16
from pipeline.quantize.int8 import quantize_int8

FAMILIES = {  # one model per family, small: (config, a size other than the traced 64x64)
    "milesial": ({"num_classes": 4, "in_channels": 3, "base_channels": 8, "bilinear": False}, (75, 101)),
    "bubbliiiing-vgg16": ({"num_classes": 4, "in_channels": 3}, (96, 64)),
    "zhixuhao": ({"in_channels": 1}, (48, 80)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> path of a deterministic checkpoint, written on first use (the full-width ones take seconds)."""
    folder = tmp_path_factory.mktemp("onnx-checkpoints")
    written: dict[str, str] = {}

    class Checkpoints:
        def __getitem__(self, name: str) -> str:
            if name not in written:
                written[name] = write_deterministic_checkpoint(folder / f"{name}.pth", name,
                                                               **FAMILIES[name][0])
            return written[name]

    return Checkpoints()


def _session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _torch(loaded, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return loaded.module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_is_dynamic_and_equals_torch(checkpoints, name):
    loaded = load_model(name, checkpoints[name])
    model = export_onnx(loaded)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert dict((p.key, p.value) for p in model.metadata_props)["unet_pipeline.model"] == name
    height, width = FAMILIES[name][1]
    x = np.random.default_rng(0).random((3, loaded.module.in_channels, height, width), dtype=np.float32)
    expected = _torch(loaded, x)
    got = _session(model).run(None, {"input": x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))


def test_fixed_size_export_and_its_checks(checkpoints):
    loaded = load_model("milesial", checkpoints["milesial"])
    model = export_onnx(loaded, (40, 56))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 40, 56]
    x = np.random.default_rng(2).random((2, 3, 40, 56), dtype=np.float32)
    np.testing.assert_allclose(_session(model).run(None, {"input": x})[0], _torch(loaded, x), atol=1e-4)
    vgg = LoadedModel(create_model("bubbliiiing-vgg16", num_classes=4), MODELS.get("bubbliiiing-vgg16"), {},
                      CheckpointInfo("unsaved", "", {}))
    with pytest.raises(ConfigError, match="multiples of 32"):
        export_onnx(vgg, (100, 100))


def test_fp16_emulation_rounds_weights_and_activations(checkpoints):
    loaded = load_model("milesial", checkpoints["milesial"])
    model = export_onnx(loaded)
    emulated = emulate_fp16(model)
    for init in emulated.graph.initializer:
        values = onnx.numpy_helper.to_array(init)
        if values.dtype == np.float32:
            np.testing.assert_array_equal(values, values.astype(np.float16).astype(np.float32))
    x = np.random.default_rng(1).random((2, 3, 72, 88), dtype=np.float32)
    out = _session(emulated).run(None, {"input": x})[0]
    np.testing.assert_array_equal(out, out.astype(np.float16).astype(np.float32))  # outputs are fp16 values
    exact = _torch(loaded, x)
    with torch.no_grad():
        half = loaded.module.half()(torch.from_numpy(x).half()).float().numpy()
    loaded.module.float()
    error, torch_error = np.abs(out - exact).max(), np.abs(half - exact).max()
    print(f"fp16 emulation max error {error:.2e}, torch fp16 {torch_error:.2e}")
    assert 0 < error < 4 * torch_error  # real fp16 rounding, of the size a real fp16 pass has


def test_int8_is_per_channel_qdq_with_7_bit_weights_and_methods_differ(checkpoints):
    loaded = load_model("milesial", checkpoints["milesial"])
    model = export_onnx(loaded)
    inputs = [factories.samples(1, first=600 + i)[0][1] for i in range(3)]
    xs = [(np.asarray(im, np.float32) / 255).transpose(2, 0, 1)[None].copy() for im in inputs]
    stats = calibration.collect_statistics(model, xs)
    entropy_ranges = calibration.activation_ranges(stats, "entropy")
    minmax_ranges = calibration.activation_ranges(stats, "minmax")
    differing = [n for n in entropy_ranges if not np.allclose(entropy_ranges[n], minmax_ranges[n], rtol=1e-3)]
    assert len(differing) > len(entropy_ranges) // 4, "entropy calibration must clip where min/max does not"
    quantized = quantize_int8(model, entropy_ranges)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    weights = [n for n in quantized.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8]
    assert len(weights) >= 19  # every convolution of the UNet
    for node in weights:
        assert np.abs(inits[node.input[0]].astype(np.int32)).max() <= 64  # reduce_range: 7-bit weights
    assert any(inits[n.input[1]].size > 1 for n in weights)  # per-channel scales
    x = xs[0]
    exact = _torch(loaded, x)
    got = _session(quantized).run(None, {"input": x})[0]
    agreement = (got.argmax(1) == exact.argmax(1)).mean()
    print(f"int8 arg-max agreement {agreement:.4f}")
    assert agreement > 0.95


def _context(tmp_path: Path, images: list[np.ndarray], method: str = "entropy",
             cpu: CpuFeatures | None = None) -> PrepareContext:
    from pipeline.processing.base import to_network_input

    return PrepareContext(settings=BackendConfig(calibration=method, calibration_images=4),
                          to_network_input=to_network_input, sample_images=lambda n: images[:n],
                          cache_dir=str(tmp_path / "cache"), cpu=cpu)


def _weight_magnitude(model) -> int:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return max(int(np.abs(inits[n.input[0]].astype(np.int32)).max()) for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8)


def test_int8_weight_bits_follow_the_actor_nodes_cpu(checkpoints, tmp_path):
    """VNNI/AMX: full 8-bit weights; without: 7-bit (reduce_range). Recorded in the spec and the cache key."""
    images = [np.asarray(im.resize((64, 48))) for _, im, _ in factories.samples(3, first=710)]
    spec = BackendSpec(name="onnx", model="milesial", checkpoint=checkpoints["milesial"], precision="int8")
    vnni = CpuFeatures.from_flags(["avx2", "avx512f", "avx512_vnni"], "VNNI CPU")
    plain = CpuFeatures.from_flags(["avx2"], "AVX2 CPU")
    full = prepare_backend(spec, _context(tmp_path, images, cpu=vnni))
    reduced = prepare_backend(spec, _context(tmp_path, images, cpu=plain))
    assert full.options["int8_weight_bits"] == 8 and reduced.options["int8_weight_bits"] == 7
    assert full.options["onnx_path"] != reduced.options["onnx_path"]  # two cache entries
    assert _weight_magnitude(onnx.load(full.options["onnx_path"])) == 127
    assert _weight_magnitude(onnx.load(reduced.options["onnx_path"])) <= 64
    sidecar = json.loads(Path(full.options["onnx_path"]).with_suffix(".json").read_text())
    assert sidecar["settings"]["calibration"]["reduce_range"] is False


def test_backend_through_prepare_and_create(checkpoints, tmp_path):
    from pipeline.processing.base import to_network_input

    images = [np.asarray(im.resize((64, 48))) for _, im, _ in factories.samples(3, first=700)]
    spec = BackendSpec(name="onnx", model="milesial", checkpoint=checkpoints["milesial"], precision="fp32",
                       threads=1, model_config={})
    prepared = prepare_backend(spec, _context(tmp_path, images))
    assert Path(prepared.options["onnx_path"]).is_file() and prepared.options["onnx_cache_hit"] is False
    backend = create_backend(prepared, to_network_input)
    torch_backend = create_backend(BackendSpec(name="torch", model="milesial",
                                               checkpoint=checkpoints["milesial"],
                                               threads=1), to_network_input)
    batch = np.stack(images)
    try:
        np.testing.assert_allclose(backend.run(batch), torch_backend.run(batch), atol=1e-4)
    finally:
        torch_backend.close()  # puts torch's process-wide thread count back
    backend.close()
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.run(batch)
    again = prepare_backend(spec, _context(tmp_path, images))
    assert (again.options["onnx_cache_hit"] is True
            and again.options["onnx_path"] == prepared.options["onnx_path"])
    with pytest.raises(ConfigError, match="CPU"):
        prepare_backend(BackendSpec(name="onnx", checkpoint=checkpoints["milesial"], device="cuda"),
                        _context(tmp_path, images))
    Path(prepared.options["onnx_path"]).write_bytes(b"changed")
    stale = {k: v for k, v in prepared.options.items() if k != "onnx_model_ref"}
    with pytest.raises(ConfigError, match="sha256"):
        create_backend(BackendSpec(name="onnx", checkpoint=checkpoints["milesial"], options=stale),
                       to_network_input)


def test_big_images_run_one_per_session_call_and_small_ones_batched(checkpoints, tmp_path):
    from pipeline.backends import onnx_backend
    from pipeline.processing.base import to_network_input

    side = int(onnx_backend.SINGLE_IMAGE_PIXELS ** 0.5)
    images = [np.asarray(im.resize((64, 48))) for _, im, _ in factories.samples(3, first=700)]
    spec = BackendSpec(name="onnx", model="milesial", checkpoint=checkpoints["milesial"], threads=1)
    backend = create_backend(prepare_backend(spec, _context(tmp_path, images)), to_network_input)
    session, calls = backend._session, []

    class Recording:  # the session, noting each call's batch shape
        def run(self, names, feed):
            calls.append(next(iter(feed.values())).shape)
            return session.run(names, feed)

    backend._session = Recording()
    try:
        big = np.stack([np.asarray(im.resize((side, side))) for im in map(Image.fromarray, images)])
        out = backend.run(big)
        assert calls == [(1, 3, side, side)] * 3
        whole = session.run(None, {backend._input: to_network_input(big)})[0]
        np.testing.assert_allclose(out, whole, atol=1e-5)  # the batched call, one image at a time
        calls.clear()
        assert backend.run(np.stack(images)).shape[0] == 3 and calls == [(3, 3, 48, 64)]
    finally:
        backend.close()


def test_int8_without_usable_images_fails_with_a_clear_error(checkpoints, tmp_path):
    spec = BackendSpec(name="onnx", model="milesial", checkpoint=checkpoints["milesial"], precision="int8")
    with pytest.raises(ConfigError, match="no usable image"):
        prepare_backend(spec, _context(tmp_path, []))


def test_torch_backend_points_int8_at_onnx(checkpoints):
    from pipeline.processing.base import to_network_input

    with pytest.raises(ConfigError, match="--backend onnx --precision int8"):
        create_backend(BackendSpec(name="torch", checkpoint=checkpoints["milesial"], precision="int8"),
                       to_network_input)


# --------------------------------------------------------------------------------------- through the pipeline
def _masks(output: Path) -> dict[str, np.ndarray]:
    masks = {}
    for part in sorted((output / "masks").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            masks[row["id"]] = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
    return masks


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    sizes = [(72, 64), (64, 90), (100, 70), (64, 64), (80, 96), (88, 72)]  # every image its own network shape
    items = [(f"img{i}", *factories.make_sample_pair(800 + i, sizes[i])) for i in range(len(sizes))]
    return factories.write_pairs(tmp_path_factory.mktemp("onnx-data"), items)


def _run(dataset: Path, output: Path, checkpoint: str, **changes):
    from pipeline.run import run

    config = RunConfig.create(input=str(dataset), output=str(output), checkpoint=checkpoint, model="milesial",
                              scale=1.0,
                       num_cpus_per_actor=0.5, progress=False, report=False, **changes)
    return run(config)


@pytest.mark.integration
def test_pipeline_onnx_masks_equal_torch_and_int8_is_close(ray_session, dataset, checkpoints, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))
    checkpoint = checkpoints["milesial"]
    reference = _run(dataset, tmp_path / "torch", checkpoint, concurrency=1)
    exported = _run(dataset, tmp_path / "onnx", checkpoint, backend="onnx", concurrency=1)
    torch_masks, onnx_masks = _masks(tmp_path / "torch"), _masks(tmp_path / "onnx")
    assert sorted(onnx_masks) == sorted(torch_masks) and len(torch_masks) == 6
    pixels = sum(m.size for m in torch_masks.values())
    differing = sum(int((onnx_masks[k] != m).sum()) for k, m in torch_masks.items())
    print(f"onnx fp32 vs torch fp32: {differing} of {pixels} mask pixels differ (arg-max ties)")
    assert differing <= max(2, pixels // 10_000)
    assert exported.metrics["miou"] == pytest.approx(reference.metrics["miou"], abs=1e-3)

    calls = []
    original = calibration.collect_statistics
    monkeypatch.setattr(calibration, "collect_statistics", lambda *a, **k: calls.append(1) or original(*a,
                                                                                                       **k))
    first = _run(dataset, tmp_path / "int8-a", checkpoint, backend="onnx", precision="int8", concurrency=2,
                 shard_size=3, calibration_images=4)  # two shards: both actors get work
    assert len(calls) == 1  # once per job, on the driver; two actors share the result
    cached = sorted((tmp_path / "cache" / "unet-pipeline" / "backends" / "onnx").glob("milesial-int8-*.onnx"))
    assert len(cached) == 1
    sidecar = json.loads(cached[0].with_suffix(".json").read_text())
    assert sidecar["settings"]["calibration"]["method"] == "entropy"
    assert sidecar["settings"]["calibration"]["images"] == 4
    stamp = cached[0].stat().st_mtime_ns
    second = _run(dataset, tmp_path / "int8-b", checkpoint, backend="onnx", precision="int8", concurrency=2,
                  shard_size=3, calibration_images=4)
    assert len(calls) == 1 and cached[0].stat().st_mtime_ns == stamp  # the second job reused the cache
    cpu = cpu_features.detect()  # the actors run here: the run records this machine's features and choice
    assert first.metrics["cpu"]["features"] == sorted(cpu.features)
    assert first.metrics["backend"]["int8_weight_bits"] == (8 if cpu.int8_full_range else 7)
    assert sidecar["settings"]["calibration"]["reduce_range"] is (not cpu.int8_full_range)
    assert second.metrics["miou"] == first.metrics["miou"]
    int8_masks = _masks(tmp_path / "int8-a")
    agreement = sum(int((int8_masks[k] == m).sum()) for k, m in torch_masks.items()) / pixels
    change = first.metrics["miou"] - reference.metrics["miou"]
    print(f"int8 (entropy) vs torch fp32: mIoU change {change:+.4f}, mask agreement {agreement:.4f}")
    assert agreement > 0.95 and abs(change) < 0.05
