"""An inference actor that dies mid-batch is restarted and its batch re-run: the results equal a clean run's,
with no image counted or written twice. A batch that kills every actor stops the run (it does not loop
forever)."""

from __future__ import annotations

import json
import os

import pytest
from faults.crashing_backend import image_digest
from faults.support import (
    GOOD_COUNT,
    assert_same_results,
    base_config,
    clean_reference,
    good_items,
    read_outputs,
)

from pipeline.models import load_model
from pipeline.processing import create_processing
from pipeline.results import RunFailed
from pipeline.run import INFERENCE_TASK_RETRIES, run

pytestmark = pytest.mark.integration
BACKEND = "tests.faults.crashing_backend:FaultyBackend"


def _network_input_digest(checkpoint: str, index: int) -> str:
    """SHA-256 of good image `index` as the backend receives it (milesial's processing at scale 1)."""
    loaded = load_model("milesial", checkpoint)
    processing = create_processing("upstream", family=loaded.family, num_classes=4, in_channels=3, scale=1.0)
    return image_digest(processing.prepare(good_items()[index][1]).image)


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_an_actor_killed_mid_batch_changes_nothing(tmp_path_factory, tmp_path, ray_session):
    reference = clean_reference(tmp_path_factory)
    marker = tmp_path / "crashed"
    output = tmp_path / "out"
    options = {"crash_on_sha256": _network_input_digest(reference.checkpoint, 5), "crash_marker": str(marker)}
    run(base_config(str(reference.data), str(output), reference.checkpoint, backend=BACKEND,
                    backend_options=options))

    pids = [int(line) for line in marker.read_text().split()]
    assert len(pids) == 1 and _process_is_gone(pids[0]), "the actor holding image 5 died once"
    outputs = read_outputs(str(output))
    assert_same_results(outputs, reference.outputs)  # includes: every Parquet id once, every PNG once
    assert outputs.errors == [] and outputs.metrics["num_inputs"] == GOOD_COUNT
    committed = [json.loads(p.read_text()) for p in (output / "_run" / "parts").glob("*.json")]
    rows = [(part["shard"], row) for part in committed for row in part["rows"]]
    assert len(rows) == len(set(rows)) == GOOD_COUNT, "each input committed exactly once"


@pytest.mark.slow  # INFERENCE_TASK_RETRIES + 1 actor starts (each loads torch and the model)
def test_a_batch_that_kills_every_actor_stops_the_run(tmp_path_factory, tmp_path, ray_session):
    reference = clean_reference(tmp_path_factory)
    marker = tmp_path / "crashed"
    options = {"crash_on_sha256": _network_input_digest(reference.checkpoint, 5), "crash_marker": str(marker),
               "crash_every_time": True}
    with pytest.raises(RunFailed, match="--resume"):
        run(base_config(str(reference.data), str(tmp_path / "out"), reference.checkpoint, backend=BACKEND,
                        backend_options=options))
    assert len(marker.read_text().split()) == INFERENCE_TASK_RETRIES + 1
