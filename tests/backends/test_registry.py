"""The backend registry: every entry keeps the contract, a backend added from a test file runs through the
pipeline, and the actor pool each entry gets on a given cluster."""

from __future__ import annotations

import io

import factories
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.actor_plan import plan_actors
from pipeline.backends import BACKENDS, BackendEntry
from pipeline.backends.variants import BackendVariant
from pipeline.config import BackendConfig, ExecutionConfig, RunConfig
from pipeline.defaults import default_checkpoint
from pipeline.errors import ConfigError, UnknownNameError

PLUGIN = "tests.backends.times_two_backend:ENTRY"
CPU_CLUSTER = {"CPU": 2.0}
DEVICE_CLUSTER = {"CPU": 8.0, "GPU": 2.0, "VACC": 2.0}


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_entry_keeps_the_contract(name):
    entry = BACKENDS.get(name)
    assert isinstance(entry, BackendEntry) and entry.name == name and entry.description
    assert entry.precisions and len(set(entry.precisions)) == len(entry.precisions)
    entry.check_precision(entry.precisions[0])
    with pytest.raises(ConfigError, match=f"--backend {name} runs --precision"):
        entry.check_precision("fp8")
    settings = BackendConfig(name=name)
    on_cpu = entry.runs_on_cpu(settings)
    assert isinstance(on_cpu, bool)
    assert on_cpu or entry.devices is not None, "a device backend must say how many devices a cluster offers"
    assert isinstance(entry.actor_resources(settings), dict)
    assert BackendVariant.parse(f"{name}:{entry.precisions[0]}").backend == name


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_entry_gets_a_sensible_actor_pool(name):
    entry = BACKENDS.get(name)
    settings = BackendConfig(name=name)
    plan = plan_actors(ExecutionConfig(), settings, entry, DEVICE_CLUSTER)
    if entry.runs_on_cpu(settings):
        assert (plan.actors, plan.threads) == (8, 1), "CPU backends: one single-threaded actor per core"
    else:
        assert plan.actors == min(entry.devices(settings, DEVICE_CLUSTER), 7)
    assert plan.ray_resources["num_cpus"] > 0
    assert plan_actors(ExecutionConfig(concurrency=3), settings, entry, DEVICE_CLUSTER).actors == 3
    assert plan_actors(ExecutionConfig(), settings, entry, DEVICE_CLUSTER, max_useful=1).actors == 1


def test_device_backends_ask_ray_for_their_devices():
    cuda = BackendConfig(name="torch", device="cuda")
    torch_entry = BACKENDS.get("torch")
    assert not torch_entry.runs_on_cpu(cuda)
    plan = plan_actors(ExecutionConfig(), cuda, torch_entry, DEVICE_CLUSTER)
    assert plan.actors == 2 and plan.ray_resources["num_gpus"] == 1
    vacc = BackendConfig(name="vacc", actors_per_die=2)
    plan = plan_actors(ExecutionConfig(), vacc, BACKENDS.get("vacc"), DEVICE_CLUSTER)
    assert plan.actors == 4 and plan.ray_resources["resources"] == {"VACC": 0.5}


def test_unknown_backends_are_named_with_a_suggestion():
    with pytest.raises(UnknownNameError, match="Did you mean 'onnx'"):
        BACKENDS.get("onx")
    with pytest.raises(UnknownNameError, match="cannot load 'NOPE'"):
        BACKENDS.get("tests.backends.times_two_backend:NOPE")


def test_a_plain_factory_is_a_cpu_backend_with_one_actor_per_core():
    entry = BACKENDS.get("tests.faults.crashing_backend:FaultyBackend")
    assert entry.runs_on_cpu(BackendConfig(name=entry.name))
    assert plan_actors(ExecutionConfig(), BackendConfig(name=entry.name), entry, CPU_CLUSTER).actors == 2


@pytest.mark.integration
def test_a_backend_from_a_test_file_runs_through_the_pipeline(ray_session, tmp_path):
    from pipeline.processing import create_processing
    from pipeline.run import run

    data = factories.write_pairs(tmp_path / "data", factories.samples(6, size=(48, 40)))
    config = RunConfig.create(input=str(data), output=str(tmp_path / "out"), checkpoint=default_checkpoint(),
                              model="milesial", backend=PLUGIN, processing="model-res", input_size=32,
                              shard_size=3, progress=False, report=False)
    metrics = run(config).metrics
    assert metrics["backend"]["name"] == PLUGIN and metrics["backend"]["actors"] == 2  # one per CPU
    assert metrics["num_images"] == 6 and metrics["num_errors"] == 0

    from pipeline.models import MODELS

    processing = create_processing("model-res", family=MODELS.get("milesial"), num_classes=4, in_channels=3,
                                   input_size=32)
    rows = pq.read_table(tmp_path / "out" / "masks").to_pylist()
    assert len(rows) == 6
    for row in rows:
        image = Image.open(data / "images" / f"{row['id']}.png")
        prepared = processing.prepare(image).image  # (32, 32, 3) uint8
        expected = np.argmax(prepared,
                             axis=2)  # 2 x the channels; the zero class never wins but ties go first
        expected[prepared.max(axis=2) == 0] = 0
        mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
        np.testing.assert_array_equal(mask, expected, err_msg=row["id"])
