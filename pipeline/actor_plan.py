"""How many inference actors a run gets, their Ray resources and their intra-op threads.

A pure function of the run's settings, the backend's registry entry and the cluster's resources, so it is
tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.backends.base import BackendEntry
from pipeline.config import BackendConfig, ExecutionConfig

MIN_TASK_ROOM = 0.5  # CPUs always left for the read/preprocess/write tasks when actors hold devices


@dataclass(frozen=True)
class ActorPlan:
    """The inference actor pool of one run.

    Attributes:
        actors: pool size.
        cpus_per_actor: the Ray CPU request of each actor.
        threads: intra-op threads of each actor's backend.
        resources: further Ray resources of each actor (`num_gpus`, custom resources), from the backend entry.
    """

    actors: int
    cpus_per_actor: float
    threads: int
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def ray_resources(self) -> dict[str, Any]:
        """Keyword arguments of `map_batches` for the actors."""
        return {"num_cpus": self.cpus_per_actor, **self.resources}


def plan_actors(execution: ExecutionConfig, settings: BackendConfig, entry: BackendEntry,
                cluster: Mapping[str, float], max_useful: int | None = None) -> ActorPlan:
    """The actor pool for this run.

    CPU backends, by default: one single-threaded actor per CPU, their Ray CPU requests sharing what the
    read/preprocess/write tasks leave. Measured with `unet-pipeline bench` on 2 cores: two 1-thread actors
    beat one 2-thread actor by 1.6-2x inside the pipeline, because torch's thread team stalls whenever a task
    takes one of its cores (README, "Benchmarks"). Device backends (cuda, vacc): one actor per device (per die
    share), within the CPUs left for the tasks. `max_useful` (the number of read tasks to do) caps the pool:
    more actors would idle.
    """
    cpus = float(cluster.get("CPU", 1.0))
    room = max(cpus - execution.num_cpus_per_task, MIN_TASK_ROOM)
    on_cpu = entry.runs_on_cpu(settings)
    if execution.concurrency is not None:
        actors = execution.concurrency
    elif on_cpu:
        actors = max(1, int(cpus // (execution.num_cpus_per_actor or 1.0)))
    else:
        by_cpus = max(1, int(room // (execution.num_cpus_per_actor or 1.0)))
        devices = entry.devices(settings, cluster) if entry.devices is not None else 1
        actors = min(by_cpus, max(1, int(devices)))
    # Each actor's CPU request is the full pool's share even when a small input needs fewer actors: the pool
    # started before the input was listed (`pipeline.pool.start_pool`) then only shrinks, keeping its actors.
    cpus_per_actor = execution.num_cpus_per_actor or round(min(1.0, room / actors), 3)
    if max_useful is not None and execution.concurrency is None:
        actors = max(1, min(actors, max_useful))
    if on_cpu:
        threads = execution.threads_per_actor or max(1, round(cpus_per_actor))
    else:
        threads = execution.threads_per_actor or max(1, int(cpus // actors))
    return ActorPlan(actors, cpus_per_actor, threads, entry.actor_resources(settings))
