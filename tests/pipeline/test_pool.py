"""The inference pool: its actors start before the backend spec exists, serve the spec they are given, grow
and shrink with the plan, and (inside `keep_pool`) serve later runs of other backends without restarting."""

from __future__ import annotations

import json
from pathlib import Path

import factories
import pytest

from pipeline import pool as pool_module
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


def test_an_actor_still_starting_is_killed_only_once_started(ray_session, tmp_path, monkeypatch):
    """Ray loses a kill that reaches a worker before it runs the actor's constructor (the process then lives
    on, holding its CPUs): `_retire` kills such an actor once its constructor has returned, and `close_pool`
    returns when it is gone."""
    import time

    import ray

    class SlowToStart:  # defined here, so that Ray ships it by value to the worker
        def __init__(self, note: str) -> None:
            time.sleep(1.5)
            Path(note).write_text(repr(time.time()))

    kills: list[float] = []
    kill = pool_module._kill
    monkeypatch.setattr(pool_module, "_kill", lambda actor: (kills.append(time.time()), kill(actor)))
    note = tmp_path / "constructed"
    actor = ray.remote(SlowToStart).options(num_cpus=1).remote(str(note))
    pool_module._retire(actor, constructed=False)
    assert kills == []  # not yet: it is still starting
    pool_module._wait_for_retired()
    assert len(kills) == 1 and kills[0] >= float(note.read_text())


def test_closing_a_pool_that_just_started_gives_every_cpu_back(ray_session):
    import time

    import ray

    from pipeline.models import load_model
    from pipeline.processing import create_processing

    loaded = load_model("milesial", default_checkpoint())
    processing = create_processing("model-res", family=loaded.family, num_classes=loaded.num_classes,
                                   in_channels=3, input_size=(32, 32))
    start_pool(processing, None, ActorPlan(2, 1.0, 1))
    close_pool()
    deadline = time.monotonic() + 5  # a killed actor's CPUs come back a moment after the kill
    total = ray.cluster_resources()["CPU"]
    while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == total


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


def test_the_driver_rests_while_the_actors_work(ray_session, tmp_path):
    """Slow actors (a device: 0.3 s a batch, no CPU) and big preprocessed images (992x992: 4 MB a row with
    its label), so Ray Data's read-ahead cap holds the reads back: its scheduling loop then has no task to
    wait on, and without `pipeline.executor_idle` it spins a core of the driver for the whole run."""
    import time

    data = factories.write_pairs(tmp_path / "data", factories.samples(24, size=(24, 24)))
    config = _config(data, tmp_path / "out", backend="tests.backends.times_two_backend:ENTRY",
                     backend_options={"sleep_seconds": 0.3}, batch_size=1, input_size=992)
    run(config.replace(output=str(tmp_path / "warm-up"), limit=2))  # worker processes started
    wall, cpu = time.perf_counter(), time.process_time()
    metrics = run(config).metrics
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert metrics["num_images"] == 24 and wall > 24 * 0.3 / 2
    print(f"driver CPU {cpu:.1f} s in {wall:.1f} s")
    assert cpu / wall < 0.5, f"the driver used {cpu:.1f} CPU seconds in a {wall:.1f} s run"


def test_the_idle_pause_sleeps_only_when_no_task_runs(monkeypatch):
    from pipeline import executor_idle

    class Operator:
        def __init__(self, active: int) -> None:
            self.active = active

        def num_active_tasks(self) -> int:
            return self.active

    class Executor:
        def __init__(self, *active: int) -> None:
            self._topology = {Operator(n): None for n in active}

    pauses: list[float] = []
    monkeypatch.setattr(executor_idle.time, "sleep", pauses.append)
    pause = executor_idle.IdlePause()
    pause.on_execution_step(Executor(0, 1))
    pause.on_execution_step(object())  # an executor of another Ray version: left alone
    assert pauses == []
    pause.on_execution_step(Executor(0, 0))
    assert pauses == [executor_idle.IDLE_PAUSE_SECONDS]


def test_big_network_inputs_are_dealt_and_committed_in_batches_not_whole_shards(ray_session, tmp_path):
    """A fixed 992x992 input: 0.98 M pixels an image, so BLOCK_PIXELS (2 M) gives blocks of 2 rows (batch 1).
    6 shards of 4: the first 2 go out in those blocks (before, one block each), the last 2 x actors shards
    batch by batch as every run's tail does."""
    from pipeline.run import BLOCK_PIXELS, block_rows

    assert BLOCK_PIXELS // 992**2 == 2
    data = factories.write_pairs(tmp_path / "data", factories.samples(24, size=(24, 24)))
    metrics = run(_config(data, tmp_path / "out", input_size=992, batch_size=1, shard_size=4)).metrics
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_run" / "parts").glob("*.json")]
    assert metrics["num_images"] == 24 and metrics["listing"]["shards"] == 6
    assert sorted(len(r["rows"]) for r in records) == [1] * 16 + [2] * 4
    assert block_rows(None, 4) is None  # no fixed input size (milesial's scale): whole shards


def test_the_tail_is_dealt_one_big_image_at_a_time():
    """A run's last shards go out in units of a batch, but one image from 512x512 up."""
    from types import SimpleNamespace

    from pipeline.run import tail_rows

    assert [tail_rows(SimpleNamespace(input_size=(side, side)), 4) for side in (64, 256, 300, 512, 992)] == [
        4, 4, 2, 1, 1]
    assert tail_rows(SimpleNamespace(input_size=(64, 64)), 2) == 2  # never more than a batch
    assert tail_rows(None, 4) == 4  # no fixed input size: batch by batch


def test_a_long_block_is_not_queued_behind_another():
    """Short blocks: an actor holds one running and one queued; once blocks take QUEUE_BELOW_SECONDS, one."""
    clock = [0.0]
    pace = pool_module._BlockPace(2, clock=lambda: clock[0])
    assert pace.in_flight_limit() == pool_module.IN_FLIGHT_PER_ACTOR == 2  # nothing measured yet
    pace.dealt(0), pace.dealt(0), pace.dealt(1)
    clock[0] = 0.2
    pace.finished(0)
    assert pace.last_seconds == pytest.approx(0.2) and pace.in_flight_limit() == 2
    clock[0] = 0.2 + pool_module.QUEUE_BELOW_SECONDS  # the queued block ran from the first one's end
    pace.finished(0)
    assert pace.last_seconds == pytest.approx(pool_module.QUEUE_BELOW_SECONDS) and pace.in_flight_limit() == 1
    clock[0] += 5.0
    pace.dealt(0)  # dealt to an idle actor: timed from its dealing, not from the actor's last block
    clock[0] += 0.1
    pace.finished(0)
    assert pace.last_seconds == pytest.approx(0.1) and pace.in_flight_limit() == 2


def test_slow_blocks_end_on_every_actor_within_one_block(ray_session, tmp_path, monkeypatch):
    """Slow actors (0.4 s an image, no CPU), 992x992 inputs, batch 4: 5 shards of 4, the first dealt as one
    4-image block (1.6 s), the last 2 x actors as single images. Neither actor may idle for more than one
    image's time while the other still has work (dealt in 4-image units, 5 of them, the ends were a whole
    1.6 s unit apart)."""
    monkeypatch.setattr(pool_module, "QUEUE_BELOW_SECONDS", 0.3)
    data = factories.write_pairs(tmp_path / "data", factories.samples(20, size=(24, 24)))
    config = _config(data, tmp_path / "out", backend="tests.backends.times_two_backend:ENTRY",
                     backend_options={"sleep_seconds_per_image": 0.4}, batch_size=4, input_size=992,
                     shard_size=4)
    assert run(config).metrics["num_images"] == 20
    by_actor: dict[str, list[float]] = {}
    for path in (tmp_path / "out" / "_run" / "parts").glob("*.json"):
        record = json.loads(path.read_text())
        by_actor.setdefault(record["actor"], []).append(record["inferred_at"])
    ends = sorted(max(times) for times in by_actor.values())
    print({actor: len(times) for actor, times in by_actor.items()}, f"ends {ends[1] - ends[0]:.2f} s apart")
    assert sum(len(times) for times in by_actor.values()) == 1 + 16  # the first shard whole, then images
    assert len(by_actor) == 2 and ends[1] - ends[0] <= 0.4 + 0.3
