"""The VACC backend's real code against the fake `vaststreamx` (tests/fakes), in this process.

Outputs are compared with the fake's documented numerics, computed independently from the checkpoint
(vacc_reference.py).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fake_vamc import compile_fake_vacc_model, put_fake_sdk_on_path
from vacc_reference import make_checkpoint, reference_logits, sidecar_thresholds

from pipeline.backends import BackendSpec, PrepareContext, create_backend, prepare_backend
from pipeline.backends.vacc_dies import DieClaim, resource_share
from pipeline.config import BackendConfig
from pipeline.errors import BackendUnavailable, ConfigError
from pipeline.processing.base import to_network_input

SIZE = (64, 64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), 3, 4)


@pytest.fixture
def fake_sdk(monkeypatch, tmp_path):
    """The fake SDK importable here: dies 0 and 1, locks and caches under tmp_path; its run log emptied."""
    put_fake_sdk_on_path(monkeypatch)
    monkeypatch.setenv("VACC_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("UNET_PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VSX_FAKE_DIE_IDS", "0,1")
    monkeypatch.delenv("VACC_DIE_IDS", raising=False)
    import vaststreamx

    vaststreamx.fake_reset()
    return vaststreamx


@pytest.fixture
def compiled(checkpoint, tmp_path):
    return compile_fake_vacc_model(checkpoint, tmp_path / "compiled", input_size=SIZE, max_batch_size=2)


@pytest.fixture
def backends():
    """Backends a test opens; all closed afterwards (close is idempotent)."""
    opened = []
    yield opened
    for backend in opened:
        backend.close()


def prepare(vacc_model: str | None, *, batch_size: int = 4, actors_per_die: int = 1,
            **options) -> BackendSpec:
    context = PrepareContext(settings=BackendConfig(vacc_model=vacc_model, actors_per_die=actors_per_die),
                             to_network_input=to_network_input, sample_images=lambda n: [],
                             cache_dir="unused")
    return prepare_backend(BackendSpec(name="vacc", batch_size=batch_size, options=options), context)


def open_backend(backends: list, spec: BackendSpec):
    backend = create_backend(spec, to_network_input)
    backends.append(backend)
    return backend


def images(count: int, size=SIZE, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *size, channels), dtype=np.uint8)


def test_outputs_follow_the_fp16_numerics_in_chunks_of_the_clamped_batch(fake_sdk, compiled, checkpoint,
                                                                         backends):
    backend = open_backend(backends, prepare(compiled.prefix, batch_size=8))
    assert backend.batch_size == 2  # 8 requested, the compiled maximum is 2
    assert (backend.input_size, backend.in_channels, backend.num_classes) == (SIZE, 3, 4)
    batch = images(5)
    out = backend.run(batch)
    assert out.dtype == np.float32 and out.shape == (5, 4, *SIZE)
    np.testing.assert_array_equal(out, reference_logits(checkpoint, batch))
    assert [n for _, n, _ in fake_sdk.fake_run_sync_calls()] == [2, 2, 1]  # N=5 is not a multiple of 2
    assert {die for die, _, _ in fake_sdk.fake_run_sync_calls()} == {backend.die_id}
    assert backend.run(batch[:0]).shape == (0, 4, *SIZE)


def test_the_fake_refuses_more_images_than_the_batch(fake_sdk, compiled):
    """The chunking above matters: the fake rejects a run_sync above the model's batch size."""
    assert fake_sdk.set_device(0) == 0
    model = fake_sdk.Model(compiled.prefix, 2)
    ops = fake_sdk.Operator.load_ops_from_json_file(compiled.vdsp_params)
    graph = fake_sdk.Graph()
    model_op = fake_sdk.ModelOperator(model)
    graph.add_operators(*ops, model_op)
    stream = fake_sdk.Stream(graph, fake_sdk.StreamBalanceMode.RUN)
    stream.register_operator_output(model_op)
    image = fake_sdk.create_image(np.zeros((3, *SIZE), np.uint8), fake_sdk.ImageFormat.RGB_PLANAR, SIZE[1],
                                  SIZE[0], 0)
    with pytest.raises(RuntimeError, match="not built"):
        stream.run_sync([image])
    stream.build()
    with pytest.raises(RuntimeError, match="3 inputs for a model of batch size 2"):
        stream.run_sync([image] * 3)
    assert len(stream.run_sync([image] * 2)) == 2


@pytest.mark.parametrize("bad", [
    images(2).astype(np.float32),            # dtype
    images(2, size=(32, 32)),                # size other than the compiled one
    images(2, channels=1),                   # channels
    images(1)[0],                            # one image, not a batch
], ids=["float32", "32x32", "1-channel", "3-D"])
def test_wrong_dtype_or_shape_is_rejected_before_the_device(fake_sdk, compiled, backends, bad):
    backend = open_backend(backends, prepare(compiled.prefix))
    with pytest.raises(ConfigError, match=r"uint8 images of shape \(N, 64, 64, 3\).*--input-size 64x64"):
        backend.run(bad)
    assert fake_sdk.fake_run_sync_calls() == []


def test_a_die_the_node_lacks_fails_and_releases_its_claim(fake_sdk, compiled, backends, monkeypatch,
                                                           tmp_path):
    monkeypatch.setenv("VACC_DIE_IDS", "7")
    with pytest.raises(BackendUnavailable, match=r"set_device\(7\) returned -1.*VACC_DIE_IDS"):
        open_backend(backends, prepare(compiled.prefix))
    claim = DieClaim.acquire([7], 1, str(tmp_path / "locks"))  # the failed backend let go of die 7
    claim.release()


def test_bad_die_id_list_is_a_config_error(fake_sdk, compiled, backends, monkeypatch):
    monkeypatch.setenv("VACC_DIE_IDS", "0,zero")
    with pytest.raises(ConfigError, match="VACC_DIE_IDS='0,zero' is not a list of die ids"):
        open_backend(backends, prepare(compiled.prefix))


@pytest.mark.parametrize("suffix", [".so", ".json", ".params"])
def test_a_missing_model_file_is_named_on_the_driver(fake_sdk, compiled, suffix):
    missing = Path(compiled.prefix + suffix)
    missing.unlink()
    with pytest.raises(ConfigError, match=f"{missing} does not exist"):
        prepare(compiled.prefix)


def test_no_model_or_a_missing_vdsp_file_is_a_config_error(fake_sdk, compiled, tmp_path):
    with pytest.raises(ConfigError, match="--backend vacc needs --vacc-model PREFIX"):
        prepare(None)
    with pytest.raises(ConfigError, match="nope.json .*does not exist"):
        prepare(compiled.prefix, vacc_vdsp_params=str(tmp_path / "nope.json"))


def test_a_folder_with_one_suite_resolves_to_its_prefix(fake_sdk, compiled):
    spec = prepare(str(Path(compiled.prefix).parent))
    assert spec.options["vacc_model"] == compiled.prefix
    assert spec.options["vacc_vdsp_params"] is None and spec.options["vacc_actors_per_die"] == 1


def test_a_vdsp_op_normalising_differently_from_the_processing_is_refused(fake_sdk, checkpoint, tmp_path):
    other = compile_fake_vacc_model(checkpoint, tmp_path / "meanstd", norm_type="DIV255_MINUSMEAN_DIVSTD")
    with pytest.raises(ConfigError, match="NormaType DIV255_MINUSMEAN_DIVSTD, which differs"):
        prepare(other.prefix, vacc_vdsp_params=other.vdsp_params)


def test_run_after_close_fails_close_twice_is_harmless_and_frees_die_and_model(fake_sdk, compiled, backends):
    spec = prepare(compiled.prefix)
    first = open_backend(backends, spec)
    die = first.die_id
    first.close()
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.run(images(1))
    assert fake_sdk.fake_live_models() == 0  # close dropped every runtime object
    assert open_backend(backends, spec).die_id == die  # and released the die


def test_a_call_from_another_thread_binds_the_die_there(fake_sdk, compiled, checkpoint, backends):
    backend = open_backend(backends, prepare(compiled.prefix))
    batch = images(3, seed=1)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=backend.run(batch)), name="other-thread")
    worker.start()
    worker.join()
    np.testing.assert_array_equal(result["out"], reference_logits(checkpoint, batch))
    assert {thread for _, _, thread in fake_sdk.fake_run_sync_calls()} == {"other-thread"}


def test_the_fake_runs_only_in_a_bound_thread_but_makes_images_and_reads_outputs_anywhere(fake_sdk, compiled):
    """What the vendor's code does: the zoo's UNet runner calls create_image and as_numpy in threads that
    never call set_device; the samples' profilers call set_device in every thread that runs a model."""
    assert fake_sdk.set_device(0) == 0
    model = fake_sdk.Model(compiled.prefix, 2)
    graph, model_op = fake_sdk.Graph(), fake_sdk.ModelOperator(model)
    graph.add_operators(*fake_sdk.Operator.load_ops_from_json_file(compiled.vdsp_params), model_op)
    stream = fake_sdk.Stream(graph, fake_sdk.StreamBalanceMode.RUN)
    stream.register_operator_output(model_op)
    stream.build()
    results, errors = {}, []

    def unbound():
        try:
            results["image"] = fake_sdk.create_image(np.zeros((3, *SIZE), np.uint8),
                                                     fake_sdk.ImageFormat.RGB_PLANAR, SIZE[1], SIZE[0], 0)
            results["host"] = fake_sdk.as_numpy(results["image"])
            stream.run_sync([results["image"]])
        except RuntimeError as err:
            errors.append(str(err))

    worker = threading.Thread(target=unbound, name="unbound")
    worker.start()
    worker.join()
    assert results["host"].shape == (3, *SIZE)  # image and read-back worked without set_device
    assert errors and "no device is set in thread 'unbound'" in errors[0]  # the run did not
    outputs = stream.run_sync([results["image"]])  # the image is usable from the bound thread
    assert fake_sdk.as_numpy(outputs[0][0]).shape == (1, 4, *SIZE)


def test_the_fake_refuses_an_image_made_for_another_die(fake_sdk, compiled):
    """The bug the zoo fixed (commit 4151cd4): create_image given set_device's result (0), not the die."""
    assert fake_sdk.set_device(1) == 0
    model = fake_sdk.Model(compiled.prefix, 1)
    graph, model_op = fake_sdk.Graph(), fake_sdk.ModelOperator(model)
    graph.add_operators(*fake_sdk.Operator.load_ops_from_json_file(compiled.vdsp_params), model_op)
    stream = fake_sdk.Stream(graph, fake_sdk.StreamBalanceMode.RUN)
    stream.register_operator_output(model_op)
    stream.build()
    wrong = fake_sdk.create_image(np.zeros((3, *SIZE), np.uint8), fake_sdk.ImageFormat.RGB_PLANAR, SIZE[1],
                                  SIZE[0], 0)
    with pytest.raises(RuntimeError, match="an image on die 0 for a model on die 1"):
        stream.run_sync([wrong])
    with pytest.raises(ValueError, match="device_id 5 is not a die"):
        fake_sdk.create_image(np.zeros((3, *SIZE), np.uint8), fake_sdk.ImageFormat.RGB_PLANAR, SIZE[1],
                              SIZE[0], 5)


def test_the_fake_refuses_to_list_cards_before_the_init_call(fake_sdk):
    with pytest.raises(RuntimeError, match=r"not initialised; call vaststreamx.set_device\(0\) first"):
        fake_sdk.get_all_cards()
    with pytest.raises(RuntimeError, match="not initialised"):
        fake_sdk.get_all_cards_count()
    assert fake_sdk.set_device(0) == 0
    assert fake_sdk.get_all_cards_count() == 1
    assert [d.device_id for d in fake_sdk.get_all_cards()[0].dies] == [0, 1]


def test_the_backend_initialises_the_card_before_listing_dies(fake_sdk, compiled, backends, monkeypatch):
    calls = []
    for name in ("set_device", "get_all_cards", "create_image"):
        original = getattr(fake_sdk, name)
        monkeypatch.setattr(fake_sdk, name, lambda *a, _f=original, _n=name: calls.append((_n,
                                                                                           a[:1])) or _f(*a))
    backend = open_backend(backends, prepare(compiled.prefix))
    assert calls[:3] == [("set_device", (0,)), ("get_all_cards", ()), ("set_device", (backend.die_id,))]
    backend.run(images(1))
    assert calls[3:] == [("set_device", (backend.die_id,)), ("create_image", (calls[4][1][0],))]


def test_actors_on_one_node_get_distinct_dies_until_none_is_left(fake_sdk, compiled, backends):
    spec = prepare(compiled.prefix, vacc_claim_timeout_s=0)
    assert sorted(open_backend(backends, spec).die_id for _ in range(2)) == [0, 1]
    with pytest.raises(BackendUnavailable, match=r"Every VACC die on this node is taken: dies \[0, 1\]"):
        open_backend(backends, spec)


def test_actors_per_die_shares_a_die_on_purpose(fake_sdk, compiled, backends, monkeypatch):
    monkeypatch.setenv("VSX_FAKE_DIE_IDS", "0")
    spec = prepare(compiled.prefix, actors_per_die=2, vacc_claim_timeout_s=0)
    assert [open_backend(backends, spec).die_id for _ in range(2)] == [0, 0]
    with pytest.raises(BackendUnavailable, match=r"dies \[0\] x 2 actor\(s\) per die"):
        open_backend(backends, spec)
    assert resource_share(2) == 0.5 and resource_share(3) == 0.3333  # what each actor asks Ray for


def test_a_claim_waits_for_a_die_whose_holder_is_exiting(tmp_path):
    held = DieClaim.acquire([0], 1, str(tmp_path))
    with pytest.raises(BackendUnavailable, match="taken"):
        DieClaim.acquire([0], 1, str(tmp_path), timeout_s=0)
    threading.Timer(0.5, held.release).start()
    started = time.monotonic()
    claim = DieClaim.acquire([0], 1, str(tmp_path), timeout_s=10)
    assert claim.die_id == 0 and 0.3 < time.monotonic() - started < 5
    claim.release()


def test_slots_fill_every_die_before_sharing_one(fake_sdk, compiled, backends):
    spec = prepare(compiled.prefix, actors_per_die=2)
    assert [open_backend(backends, spec).die_id for _ in range(4)] == [0, 1, 0, 1]


def test_greyscale_model_takes_its_plane_replicated_as_rgb_planar(fake_sdk, tmp_path, backends, monkeypatch):
    """As the zoo's one-channel runners do (drrn, vdsr): three equal planes, IimageFormat RGB_PLANAR."""
    grey = make_checkpoint(tmp_path, 1, 1)
    model = compile_fake_vacc_model(grey, tmp_path / "grey", max_batch_size=3)
    backend = open_backend(backends,
                           prepare(model.prefix))  # no vacc_vdsp_params: the default JSON is written
    written = json.loads((tmp_path / "cache" / "unet-pipeline" / "vacc" / "vdsp-1x64x64.json").read_text())
    assert written["OpConfig"]["IimageFormat"] == "RGB_PLANAR"
    made = []
    original = fake_sdk.create_image
    monkeypatch.setattr(fake_sdk, "create_image", lambda a, *rest: made.append(a.copy()) or original(a,
                                                                                                     *rest))
    batch = images(4, channels=1, seed=2)
    np.testing.assert_array_equal(backend.run(batch), reference_logits(grey, batch))
    assert [m.shape for m in made] == [(3, *SIZE)] * 4
    assert all((m == batch[i, :, :, 0]).all() for i, m in enumerate(made))  # each plane is the grey image


def test_a_gray_vdsp_json_is_refused_naming_rgb_planar(fake_sdk, checkpoint, compiled, tmp_path):
    from fake_vamc import zoo_vdsp_json

    gray = tmp_path / "gray-vdsp_params.json"
    gray.write_text(json.dumps(zoo_vdsp_json(*SIZE, image_format="GRAY")))
    with pytest.raises(ConfigError, match="IimageFormat GRAY, which none of Vastai's zoo VDSP JSONs uses.*"
                                          "RGB_PLANAR"):
        prepare(compiled.prefix, vacc_vdsp_params=str(gray))


def test_int8_compiled_model_quantizes_weights_and_activations(fake_sdk, checkpoint, tmp_path, backends):
    calibration = images(3, seed=7)
    model = compile_fake_vacc_model(checkpoint, tmp_path / "int8", precision="int8",
                                    calibration_images=calibration)
    thresholds = sidecar_thresholds(model.prefix)
    assert len(thresholds) == 23 and all(t > 0 for t in thresholds.values())  # every convolution's input
    backend = open_backend(backends, prepare(model.prefix, vacc_vdsp_params=model.vdsp_params))
    batch = images(2, seed=3)
    out = backend.run(batch)
    expected = reference_logits(checkpoint, batch, "int8", thresholds)
    # Equal but for rare flips: a float32 rounding difference inside a convolution (oneDNN may pick another
    # kernel from call to call) that lands on a rounding boundary of the activation quantizer moves one step.
    assert (out != expected).mean() < 0.01
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3)
    weights_only = reference_logits(checkpoint, batch, "int8")
    assert (out != weights_only).mean() > 0.2  # the activations were quantized too
    # dark images: smaller ranges, clipping
    low = compile_fake_vacc_model(checkpoint, tmp_path / "int8-dark", precision="int8",
                                  calibration_images=calibration // 8)
    assert min(sidecar_thresholds(low.prefix)["inc.double_conv.0"], 1.0) < thresholds["inc.double_conv.0"]


def test_model_files_on_s3_are_fetched_by_the_actor(fake_sdk, compiled, checkpoint, backends, s3_server,
                                                    s3_bucket):
    from conftest import upload_tree

    uri = upload_tree(Path(compiled.prefix).parent, s3_bucket, "models/unet", s3_server)
    spec = prepare(f"{uri}/mod", vacc_vdsp_params=f"{uri}/mod-vdsp_params.json")
    backend = open_backend(backends, spec)
    batch = images(2, seed=4)
    np.testing.assert_array_equal(backend.run(batch), reference_logits(checkpoint, batch))
    with pytest.raises(ConfigError, match=r"mod\.params does not exist"):
        prepare(f"s3://{s3_bucket}/models/unet/missing/mod")


def test_without_the_sdk_the_driver_fails_at_once_with_the_install_hint(monkeypatch, compiled):
    monkeypatch.delitem(sys.modules, "vaststreamx", raising=False)
    message = (r"vaststreamx.*developer centre.*pip install "
               r"vaststreamx-<version>-cp\d+-cp\d+-linux_x86_64\.whl"
               r".*--backend torch or --backend onnx")
    with pytest.raises(BackendUnavailable, match=message):
        prepare(compiled.prefix)
    spec = BackendSpec(name="vacc", options={"vacc_model": compiled.prefix})
    with pytest.raises(BackendUnavailable, match=message):  # the actor side says the same
        create_backend(spec, to_network_input)
