"""Results are committed as they are made: on a run of more than 100 shards the first part is committed early
and commits are spread over the run, never bunched at its end; and the end of a run is dealt batch by batch,
so every actor works until the last images."""

from __future__ import annotations

import json
from pathlib import Path

import factories
import pytest

from pipeline.config import RunConfig
from pipeline.defaults import default_checkpoint
from pipeline.pool import IN_FLIGHT_PER_ACTOR, keep_pool
from pipeline.run import run

pytestmark = pytest.mark.integration


def _config(data: Path, output: Path, **changes) -> RunConfig:
    settings = {"input": str(data), "output": str(output), "checkpoint": default_checkpoint(),
                "model": "milesial",
                "processing": "model-res", "input_size": 32, "progress": False, "report": False}
    return RunConfig.create(**{**settings, **changes})


def test_commits_stream_over_the_run(ray_session, tmp_path):
    data = factories.write_pairs(tmp_path / "data", factories.samples(600, size=(64, 64)))
    with keep_pool():  # the actors of the first run serve the second: start-up is not part of the measure
        run(_config(data, tmp_path / "warm", shard_size=4, limit=8, input_size=64))
        metrics = run(_config(data, tmp_path / "out", shard_size=4, input_size=64)).metrics
    streaming = metrics["streaming"]
    print(json.dumps(streaming))
    assert metrics["listing"]["shards"] == 150 and metrics["num_images"] == 600
    assert streaming["parts_committed"] >= 150
    assert streaming["first_commit_fraction_of_wall"] < 0.25
    assert streaming["commits_in_last_10_percent"] <= 0.20
    assert streaming["commit_lag_p95_seconds"] < 1.0  # committed by the actor that inferred it


def test_the_last_images_are_dealt_to_every_actor(ray_session, tmp_path):
    """40 images, shard size 32, 2 actors: not 32 on one actor and 8 on the other. Each actor's batches are
    timed by their commit records; neither may idle while the other has more than one batch queued."""
    data = factories.write_pairs(tmp_path / "data", factories.samples(40, size=(96, 96)))
    metrics = run(_config(data, tmp_path / "out", shard_size=32, batch_size=4, input_size=96)).metrics
    assert metrics["backend"]["actors"] == 2
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_run" / "parts").glob("*.json")]
    assert sum(len(r["rows"]) for r in records) == 40
    assert max(len(r["rows"]) for r in records) <= 4, "the tail went out in batches, not whole shards"
    by_actor: dict[str, list[float]] = {}
    for record in records:
        by_actor.setdefault(record["actor"], []).append(record["inferred_at"])
    assert len(by_actor) == 2, f"only {list(by_actor)} scored images"
    ends = sorted(max(times) for times in by_actor.values())
    batch = max(b - a for times in by_actor.values() for a, b in zip(sorted(times), sorted(times)[1:],
                                                                      strict=False))
    print(f"{ {a: len(t) for a, t in by_actor.items()} } batches; last batches {ends[1] - ends[0]:.2f} s "
          f"apart, longest batch {batch:.2f} s")
    # An actor holds at most IN_FLIGHT_PER_ACTOR blocks (one running, one queued), so when the last block is
    # dealt the other may still have its running batch and one queued: two batches apart at most, never more.
    assert IN_FLIGHT_PER_ACTOR == 2
    assert ends[1] - ends[0] <= 2 * batch + 0.5, "one actor idled while the other still had batches queued"
