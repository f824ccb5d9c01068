"""The inference pool: its actors start before the backend spec exists, serve the spec they are given, grow
and shrink with the plan, and (inside `keep_pool`) serve later runs of other backends without restarting."""

from __future__ import annotations

import json
from pathlib import Path

import factories
import pytest

from pipeline.actor_plan import ActorPlan
from pipeline.config import RunConfig
from pipeline.defaults import default_checkpoint
from pipeline.pool import close_pool, keep_pool, pool_for, start_pool
from pipeline.run import run

pytestmark = pytest.mark.integration


def _config(data: Path, output: Path, **changes) -> RunConfig:
    settings = {"input": str(data), "output": str(output), "checkpoint": default_checkpoint(),
                "model": "milesial", "processing": "model-res", "input_size": 32, "progress": False,
                "report": False, "bootstrap": 0}
    return RunConfig.create(**{**settings, **changes})


def _writers(output: Path) -> set[str]:
    """The processes (host:pid) that wrote a run's parts."""
    return {json.loads(p.read_text())["actor"] for p in (output / "_run" / "parts").glob("*.json")}


def test_actors_started_before_the_spec_serve_it(ray_session):
    """`start_pool` starts processes with no backend; `pool_for` hands the same actors their spec."""
    import ray

    from pipeline.backends import BackendSpec
    from pipeline.models import load_model
    from pipeline.processing import create_processing

    loaded = load_model("milesial", default_checkpoint())
    processing = create_processing("model-res", family=loaded.family, num_classes=loaded.num_classes,
                                   in_channels=3, input_size=(32, 32))
    try:
        early = start_pool(processing, None, ActorPlan(2, 0.5, 1))
        actors = list(early.actors)
        spec = BackendSpec(name="torch", model="milesial", checkpoint=default_checkpoint(), threads=1)
        pool = pool_for(spec, processing, None, ActorPlan(1, 0.5, 1))  # a small input: one actor is enough
        assert pool is early and pool.actors == actors[:1]
        assert ray.get(pool.actors[0].ready.remote(pool.spec, pool.refs)) > 0
        grown = pool_for(spec, processing, None, ActorPlan(2, 0.5, 1))
        assert grown is pool and len(grown) == 2 and grown.actors[0] == actors[0]
        other = pool_for(spec, processing, None, ActorPlan(2, 1.0, 1))  # other Ray resources: new actors
        assert other is not pool and not set(other.actors) & set(actors)
    finally:
        close_pool()


def test_a_kept_pool_serves_runs_of_other_backends_with_the_same_processes(ray_session, tmp_path):
    """torch, then a backend whose masks differ (2 x the input), then torch again: the same actor processes
    write all three, and each run's scores are its own backend's (the actors rebuilt it each time)."""
    data = factories.write_pairs(tmp_path / "data", factories.samples(12, size=(40, 40)))
    with keep_pool():
        first = run(_config(data, tmp_path / "torch", backend="torch"))
        second = run(_config(data, tmp_path / "x2", backend="tests.backends.times_two_backend:ENTRY"))
        third = run(_config(data, tmp_path / "torch-again", backend="torch"))
    writers = [_writers(tmp_path / name) for name in ("torch", "x2", "torch-again")]
    assert writers[0] & writers[1] and writers[1] & writers[2], f"new actors between runs: {writers}"
    assert second.metrics["miou"] != first.metrics["miou"], "the second run kept the first run's backend"
    assert third.metrics["miou"] == first.metrics["miou"]
