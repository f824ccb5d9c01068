"""The VACC backend in real Ray actors (the session Ray has VACC=2; workers import the fake `vaststreamx`).

* Die claiming across processes: two actors get the two dies; a killed actor's die goes to its replacement.
* A whole `pipeline.run.run` with --backend vacc: every mask and the confusion matrix equal what the fake's
  documented numerics give (vacc_reference.py), computed here without Ray or the fake.
* Without the SDK on the driver, `run` fails before anything is written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import factories
import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_vamc import compile_fake_vacc_model, put_fake_sdk_on_path
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from vacc_reference import make_checkpoint, reference_logits

from pipeline.backends import BackendSpec, PrepareContext, prepare_backend
from pipeline.config import BackendConfig, RunConfig
from pipeline.errors import BackendUnavailable
from pipeline.models import MODELS
from pipeline.processing import create_processing
from pipeline.processing.base import to_network_input
from pipeline.run import run

pytestmark = pytest.mark.integration

SIZES = [(72, 64), (64, 80), (64, 64), (80, 88), (96, 72)]  # (W, H) of the images; the network takes 64x64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), 3, 4)


@pytest.fixture
def compiled(checkpoint, tmp_path):
    return compile_fake_vacc_model(checkpoint, tmp_path / "compiled", input_size=(64, 64), max_batch_size=2)


def _die_holder(ray):
    """An actor class (defined here: Ray ships it by value) that owns a VACC backend and reports its die."""

    @ray.remote(num_cpus=0, resources={"VACC": 1}, max_restarts=0)
    class DieHolder:
        def __init__(self, spec):
            from pipeline.backends import create_backend

            self.backend = create_backend(spec, None)

        def die(self) -> tuple[int, int]:
            import os

            return self.backend.die_id, os.getpid()

    return DieHolder


def test_two_actors_get_distinct_dies_and_a_killed_actors_die_is_claimed_again(ray_session, compiled,
                                                                               tmp_path,
                                                                               monkeypatch):
    put_fake_sdk_on_path(monkeypatch)  # prepare_backend checks the SDK on the driver
    spec = prepare_backend(
        BackendSpec(name="vacc", options={"vacc_lock_dir": str(tmp_path / "locks"),
                                          "vacc_vdsp_params": compiled.vdsp_params}),
        PrepareContext(settings=BackendConfig(vacc_model=compiled.prefix), to_network_input=to_network_input,
                       sample_images=lambda n: [], cache_dir="unused"))
    holder = _die_holder(ray_session)
    first, second = holder.remote(spec), holder.remote(spec)
    (die_a, pid_a), (die_b, pid_b) = ray_session.get([first.die.remote(), second.die.remote()], timeout=120)
    assert sorted([die_a, die_b]) == [0, 1] and pid_a != pid_b
    ray_session.kill(first)
    replacement = holder.remote(spec)  # schedulable once the killed actor's VACC unit is back
    die_c, pid_c = ray_session.get(replacement.die.remote(), timeout=120)
    assert die_c == die_a and pid_c not in (pid_a, pid_b)
    assert ray_session.get(second.die.remote(), timeout=60) == (die_b, pid_b)  # the survivor kept its die
    for actor in (second, replacement):
        ray_session.kill(actor)


def _read_masks(output: str) -> tuple[dict, dict[str, np.ndarray]]:
    metrics = json.loads(Path(output, "metrics.json").read_text(encoding="utf-8"))
    masks = {}
    for path in sorted(Path(output, "masks").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            masks[row["id"]] = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
    return metrics, masks


def test_score_run_on_fake_vacc_gives_the_masks_and_metrics_the_numerics_imply(ray_session, checkpoint,
                                                                               compiled,
                                                                                tmp_path, monkeypatch):
    put_fake_sdk_on_path(monkeypatch)
    items = [(f"img{i}", *factories.make_sample_pair(700 + i, SIZES[i])) for i in range(len(SIZES))]
    data = factories.write_pairs(tmp_path / "data", items)
    output = str(tmp_path / "out")
    config = RunConfig.create(
        command="score", input=str(data), output=output, layout="pairs", model="milesial",
        checkpoint=checkpoint,
        processing="resize", input_size=(64, 64), backend="vacc", vacc_model=compiled.prefix, batch_size=4,
        shard_size=3, progress=False, report=False,
        backend_options={"vacc_vdsp_params": compiled.vdsp_params, "vacc_lock_dir": str(tmp_path / "locks")})
    result = run(config)
    metrics, masks = _read_masks(output)

    processing = create_processing("resize", family=MODELS.get("milesial"), num_classes=4, in_channels=3,
                                   input_size=(64, 64))
    expected_confusion = np.zeros((4, 4), np.int64)
    assert sorted(masks) == sorted(item_id for item_id, _, _ in items)
    for item_id, image, classes in items:
        prepared = processing.prepare(image)
        logits = reference_logits(checkpoint, prepared.image[None])[0]
        expected = processing.finish(logits, prepared.meta)
        np.testing.assert_array_equal(masks[item_id], expected, err_msg=item_id)
        keep = classes != 255
        expected_confusion += sk_confusion_matrix(classes[keep], expected[keep], labels=[0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(metrics["confusion_matrix"]), expected_confusion)
    diagonal = np.diag(expected_confusion).astype(float)
    union = expected_confusion.sum(0) + expected_confusion.sum(1) - diagonal
    with np.errstate(invalid="ignore"):
        expected_miou = float(np.nanmean(diagonal / union))
    assert result.miou == pytest.approx(expected_miou, abs=1e-12)
    assert metrics["num_images"] == len(items) and metrics["num_errors"] == 0
    assert metrics["backend"]["name"] == "vacc"


def test_without_the_sdk_a_vacc_run_fails_before_writing_anything(ray_session, checkpoint, compiled,
                                                                  tmp_path):
    items = [("img0", *factories.make_sample_pair(700, (64, 64)))]
    data = factories.write_pairs(tmp_path / "data", items)
    config = RunConfig.create(command="score", input=str(data), output=str(tmp_path / "out"), layout="pairs",
                       model="milesial", checkpoint=checkpoint, processing="resize", input_size=(64, 64),
                       backend="vacc", vacc_model=compiled.prefix, progress=False, report=False)
    with pytest.raises(BackendUnavailable,
                       match=r"pip install vaststreamx-.*--backend torch or --backend onnx"):
        run(config)
    assert not (tmp_path / "out" / "masks").exists() and not (tmp_path / "out" / "metrics.json").exists()


def test_a_cluster_without_a_vacc_resource_is_refused_instead_of_waiting_forever(ray_session, checkpoint,
                                                                                 compiled,
                                                                                 tmp_path, monkeypatch):
    put_fake_sdk_on_path(monkeypatch)
    resources = ray_session.cluster_resources()
    monkeypatch.setattr(ray_session, "cluster_resources",
                        lambda: {k: v for k,
                                 v in resources.items() if k != "VACC"})  # as a CPU-only local Ray
    items = [("img0", *factories.make_sample_pair(700, (64, 64)))]
    data = factories.write_pairs(tmp_path / "data", items)
    config = RunConfig.create(command="score", input=str(data), output=str(tmp_path / "out"), layout="pairs",
                       model="milesial", checkpoint=checkpoint, processing="resize", input_size=(64, 64),
                       backend="vacc", vacc_model=compiled.prefix, progress=False, report=False)
    with pytest.raises(BackendUnavailable, match=r"declares no VACC resource.*ray start --head --resources="):
        run(config)
    assert not (tmp_path / "out" / "masks").exists()
