"""The inference actors of a process, and dealing preprocessed blocks to them.

Each actor owns one device context (`pipeline.stages.Predictor`: a CPU thread pool, a CUDA device, a VACC
die). It predicts a block, writes and commits the block's parts itself (`pipeline.io.parts`), and returns only
the small commit records, so masks never wait in Ray's object store and every part is committed within
milliseconds of its inference.

The pool is the driver's, not one Ray Data execution's:

* its actors start as soon as Ray is up (`start_pool`), before the backend spec exists: their processes boot
  and import torch while the driver exports, probes or calibrates and lists the input; the spec reaches them
  when it is ready (`pool_for`), and they build the backend then;
* inside `keep_pool()` (`bench`, `table`, a notebook running several passes), later runs with the same
  processing and actor resources reuse its actors instead of paying their start-up again (they rebuild the
  backend only when the spec changes); otherwise a run releases its actors when it ends, so that a
  long-lived process never holds CPUs or devices other drivers need;
* the driver deals blocks pull-style: each block goes to the ready actor with the fewest calls in flight (at
  most `IN_FLIGHT_PER_ACTOR` while blocks are short, one once they take `QUEUE_BELOW_SECONDS` or more), so no
  actor idles while another has work queued.

An actor that dies (killed, out of memory, a crashing native library) is restarted by Ray and its call re-run
up to `INFERENCE_TASK_RETRIES` times, spaced by `pipeline.ray_env.NODE_LOSS_RETRY_ENV`; after that the run
stops and says to `--resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.actor_plan import ActorPlan
from pipeline.backends import BackendSpec
from pipeline.errors import PipelineError
from pipeline.io.commits import PartRecord
from pipeline.io.fs import S3Options
from pipeline.io.parts import PartSettings, write_parts

# A batch whose actor dies is re-run on a restarted actor up to this many times; Ray's default is forever,
# which would loop on an input that crashes the process every time.
INFERENCE_TASK_RETRIES = 3
IN_FLIGHT_PER_ACTOR = 2  # one running, one queued: the actor never waits for the driver between blocks
# A block is queued behind a running one only while blocks take less than this: the queue saves the driver's
# round trip (milliseconds), which only short blocks notice, and at the end of a run a long block queued on
# one actor is work the others wait out idle (VGG16 at 512 on 1 thread: 4 s an image).
QUEUE_BELOW_SECONDS = 1.0
# How long `close_pool` waits for actors it could not kill yet (still starting, see `_retire`) to be gone.
RETIRE_WAIT_SECONDS = 60.0
# While no actor has become ready, the driver says every this many seconds what the actors wait for.
START_WARNING_SECONDS = 60.0

logger = logging.getLogger(__name__)

OnParts = Callable[[list[PartRecord]], None]


class InferenceActor:
    """What each pool actor runs (wrapped by `ray.remote` in `InferencePool`).

    The actor starts before the run's backend spec exists: its constructor only imports what inference and
    post-processing need (torch, ~1.5 s), while the driver is still exporting, probing or calibrating. The
    backend is built by the first call that carries the spec (`ready`, or the first `process` of an actor Ray
    restarted) and rebuilt when a call carries a spec that builds another one (`BackendSpec.identity`). The
    spec's object refs (`split_refs`) travel with the calls too: an actor's constructor arguments hold no
    object ref, so a restart never depends on one (Ray warns about, and may fail, restarting an actor whose
    constructor arguments live in the object store).
    """

    def __init__(self, processing: Any, s3: S3Options | None) -> None:
        self._processing, self._s3 = processing, s3
        self._predictor: Any = None
        self._identity: BackendSpec | None = None
        import torch  # noqa: F401  (post-processing's, imported by its first call otherwise)

        import pipeline.stages  # noqa: F401

    def _built(self, spec: BackendSpec, refs: dict[str, Any]) -> Any:
        identity = spec.identity()
        if self._predictor is None or identity != self._identity:
            from pipeline.stages import Predictor

            self.close()
            if spec.threads:  # post-processing's torch ops: the actor's share of the cores, not all of them
                import torch

                torch.set_num_threads(int(spec.threads))
            full = dataclasses.replace(spec, options={**spec.options, **refs})
            self._predictor = Predictor(full, self._processing, self._s3)
            self._identity = identity
        return self._predictor

    def ready(self, spec: BackendSpec, refs: dict[str, Any]) -> int:
        """The actor's process id, once its backend for `spec` is built."""
        self._built(spec, refs)
        return os.getpid()

    def process(self, block: Any, settings: PartSettings, spec: BackendSpec, refs: dict[str, Any],
                ) -> list[PartRecord]:
        """Predict one preprocessed block, write and commit its parts, return their records."""
        from ray.data.block import BlockAccessor

        batch = BlockAccessor.for_block(block).to_batch_format("numpy")
        return write_parts(settings, self._built(spec, refs)(batch))

    def close(self) -> None:
        """Release the backend's device context (a VACC die, ...), if one was built."""
        if self._predictor is not None:
            self._predictor.backend.close()
            self._predictor = None


def split_refs(spec: BackendSpec) -> tuple[BackendSpec, dict[str, Any]]:
    """The spec without its object-ref options (e.g. the ONNX model's bytes), and those options."""
    import ray

    refs = {key: value for key, value in spec.options.items() if isinstance(value, ray.ObjectRef)}
    if not refs:
        return spec, {}
    options = {key: value for key, value in spec.options.items() if key not in refs}
    return dataclasses.replace(spec, options=options), refs


@dataclass(frozen=True)
class PoolKey:
    """What decides whether a pool's actors can serve a run: the same processing, S3 options and Ray resources
    per actor. The number of actors is adjusted and the backend rebuilt (`InferencePool.configure`) as the run
    needs."""

    processing: bytes
    s3: S3Options | None
    resources: bytes

    @classmethod
    def of(cls, processing: Any, s3: S3Options | None, plan: ActorPlan) -> PoolKey:
        return cls(pickle.dumps(processing), s3, pickle.dumps(sorted(plan.ray_resources.items())))


class InferencePool:
    """A set of inference actors and the driver-side dealing of blocks to them."""

    def __init__(self, processing: Any, s3: S3Options | None, plan: ActorPlan) -> None:
        import ray

        self.key = PoolKey.of(processing, s3, plan)
        self.plan = plan
        self.job_id = ray.get_runtime_context().get_job_id()  # a pool serves the Ray session that made it
        self._remote = ray.remote(InferenceActor).options(
            **plan.ray_resources, max_restarts=-1, max_task_retries=INFERENCE_TASK_RETRIES)
        self._arguments = (processing, s3)
        self.actors: list[Any] = []
        self.spec: BackendSpec | None = None  # without its object refs, which are `refs`
        self.refs: dict[str, Any] = {}
        self._not_ready: dict[Any, int] = {}
        self._ready: set[int] = set()
        self._constructed: set[Any] = set()  # actors a call of which has returned: their constructor is done
        self.resize(plan)

    def __len__(self) -> int:
        return len(self.actors)

    def resize(self, plan: ActorPlan) -> None:
        """Start or stop actors to have `plan.actors` of them (a pool started for the whole cluster shrinks
        to what a small input can use)."""
        while len(self.actors) > plan.actors:
            index = len(self.actors) - 1
            actor = self.actors.pop()
            _retire(actor, constructed=actor in self._constructed)
            self._ready.discard(index)
            self._not_ready = {ref: i for ref, i in self._not_ready.items() if i != index}
        while len(self.actors) < plan.actors:
            self.actors.append(self._remote.remote(*self._arguments))
            if self.spec is not None:
                self._not_ready[self.actors[-1].ready.remote(self.spec, self.refs)] = len(self.actors) - 1
        self.plan = plan

    def configure(self, spec: BackendSpec) -> None:
        """Have every actor build the backend of `spec` (nothing to do when they already have it)."""
        bare, refs = split_refs(spec)  # nested in a dict, refs reach the actor as refs
        same = self.spec is not None and self.spec.identity() == bare.identity()
        self.spec, self.refs = bare, refs  # this run's refs: the ones alive for a restarted actor
        if same:
            return
        self._ready = set()
        self._not_ready = {actor.ready.remote(bare, refs): index for index, actor in enumerate(self.actors)}

    def _check_ready(self, wait: bool) -> None:
        """Move actors whose backend is built into the ready set; with `wait`, block until one is ready."""
        import ray

        if not self._not_ready:
            return
        waited = 0.0
        while wait and not self._ready and not ray.wait(list(self._not_ready), num_returns=1,
                                                        timeout=START_WARNING_SECONDS)[0]:
            waited += START_WARNING_SECONDS
            logger.warning("No inference actor has started after %.0f s: each needs %s and Ray has %s free "
                           "of %s (`ray status` shows what holds the rest).", waited, self.plan.ray_resources,
                           ray.available_resources(), ray.cluster_resources())
        done, _ = ray.wait(list(self._not_ready), num_returns=len(self._not_ready), timeout=0)
        for ref in done:
            index = self._not_ready.pop(ref)
            _get(ref)  # raises what the backend's build raised (a missing SDK, a bad checkpoint, ...)
            self._ready.add(index)
            self._constructed.add(self.actors[index])

    def run(self, blocks: Iterable[Any], settings: PartSettings, on_parts: OnParts | None = None,
            ) -> list[PartRecord]:
        """Deal every block (object ref) to the pool; returns the records of the parts written, in the order
        they finished. `on_parts` is called on the driver with each finished call's records."""
        import ray

        if self.spec is None:
            raise RuntimeError("InferencePool.run before configure(spec): the actors have no backend")
        load = [0] * len(self.actors)
        in_flight: dict[Any, int] = {}
        records: list[PartRecord] = []
        pace = _BlockPace(len(self.actors))

        def collect(block_until_one: bool) -> None:
            if not in_flight:
                return
            done, _ = ray.wait(list(in_flight), num_returns=1 if block_until_one else len(in_flight),
                               timeout=None if block_until_one else 0)
            for ref in done:
                index = in_flight.pop(ref)
                load[index] -= 1
                pace.finished(index)
                parts = _get(ref)
                records.extend(parts)
                if on_parts is not None:
                    on_parts(parts)

        for block in blocks:
            self._check_ready(wait=True)
            while min(load[i] for i in self._ready) >= pace.in_flight_limit():
                # until a call finishes or another actor is ready, whichever comes first: an actor that
                # becomes ready while the others work on long batches gets the next block at once
                ray.wait([*in_flight, *self._not_ready], num_returns=1)
                collect(block_until_one=False)
                self._check_ready(wait=False)
            index = min(self._ready, key=lambda i: (load[i], i))
            call = self.actors[index].process.remote(block, settings, self.spec, self.refs)
            in_flight[call] = index
            load[index] += 1
            pace.dealt(index)
            collect(block_until_one=False)
            self._check_ready(wait=False)
        while in_flight:
            collect(block_until_one=True)
        return records

    def close(self) -> None:
        for actor in self.actors:
            _retire(actor, constructed=actor in self._constructed)
        self.actors = []


class _BlockPace:
    """How long the last finished block took to run, seen from the driver, and so how many blocks an actor
    may hold. A block's run time is from when its actor could start it (its dealing, or the end of the
    actor's previous block, whichever is later) to when the driver saw it finish."""

    def __init__(self, actors: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._queued: list[list[float]] = [[] for _ in range(actors)]  # per actor: dealing times, in order
        self._free_since = [0.0] * actors
        self.last_seconds: float | None = None

    def dealt(self, index: int) -> None:
        self._queued[index].append(self._clock())

    def finished(self, index: int) -> None:
        now = self._clock()
        started = max(self._queued[index].pop(0), self._free_since[index])
        self.last_seconds, self._free_since[index] = now - started, now

    def in_flight_limit(self) -> int:
        long_blocks = self.last_seconds is not None and self.last_seconds >= QUEUE_BELOW_SECONDS
        return 1 if long_blocks else IN_FLIGHT_PER_ACTOR


_RETIRING: list[threading.Thread] = []  # actors waiting for their constructor to return, to be killed then


def _retire(actor: Any, constructed: bool) -> None:
    """Kill `actor`: at once when its constructor has returned, else (a thread waits) as soon as it has.

    Ray 2.60 loses a kill that reaches a worker after the worker was given the actor but before it ran the
    constructor (the worker logs "Mismatched ActorID: ignoring KillActor"): Ray marks the actor dead, yet
    its process then builds it and lives on, idle, holding its CPUs, and the next run's read tasks wait for
    those CPUs forever. Seen on 2 loaded cores, where a worker takes seconds to start, when a pool started
    before the spec is shrunk or replaced at once.
    """
    if constructed:
        _kill(actor)
        return
    thread = threading.Thread(target=_kill_when_constructed, args=(actor,), daemon=True,
                              name="unet-pipeline-retire-actor")
    thread.start()
    _RETIRING.append(thread)


def _kill_when_constructed(actor: Any) -> None:
    import ray

    try:
        ray.wait([actor.__ray_ready__.remote()], num_returns=1)  # returns on success or on failure alike
    except Exception:  # the Ray session ended meanwhile: nothing is left to kill
        return
    _kill(actor)


def _wait_for_retired(timeout: float = RETIRE_WAIT_SECONDS) -> None:
    """Wait (at most `timeout` s in all) until the actors `_retire` could not kill at once are killed."""
    deadline = time.monotonic() + timeout
    while _RETIRING:
        _RETIRING[0].join(max(deadline - time.monotonic(), 0.0))
        if _RETIRING[0].is_alive():
            logger.warning("Inference actors still starting after %.0f s were left to be killed when they "
                           "have started.", timeout)
            return
        _RETIRING.pop(0)


def _kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:  # already gone with its Ray session
        pass


def _get(ref: Any) -> Any:
    """`ray.get`, re-raising a PipelineError an actor raised as itself (its message says what to do)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as err:
        cause = err.as_instanceof_cause()
        if isinstance(cause, PipelineError):
            raise cause from None
        raise
    except RayActorError as err:
        inner = getattr(err, "cause", None)
        if isinstance(inner, RayTaskError) and isinstance(inner.as_instanceof_cause(), PipelineError):
            raise inner.as_instanceof_cause() from None
        raise


_POOL: InferencePool | None = None
_KEEP = [0]  # nesting depth of keep_pool()


@contextlib.contextmanager
def keep_pool() -> Iterator[None]:
    """Within the block, runs leave their actors for the next run to reuse; they are released at its end."""
    _KEEP[0] += 1
    try:
        yield
    finally:
        _KEEP[0] -= 1
        if not _KEEP[0]:
            close_pool()


def release_unless_kept() -> None:
    """What a run does when it ends: release the pool, unless inside `keep_pool()`."""
    if not _KEEP[0]:
        close_pool()


def start_pool(processing: Any, s3: S3Options | None, plan: ActorPlan) -> InferencePool:
    """The process's pool for actors like these, resized to the plan: the current one when it fits, else a
    new one (the old one is shut down first, so that two pools never hold the CPUs or devices at once).

    A run calls it as soon as Ray is up, before its backend spec is ready, so the actors' processes start
    while the driver prepares; `pool_for` then gives them the spec.
    """
    global _POOL
    if _POOL is not None and _POOL.key == PoolKey.of(processing, s3, plan) and _alive(_POOL):
        _POOL.resize(plan)
        return _POOL
    close_pool(wait=False)  # the new actors start as the old ones' CPUs come free
    _POOL = InferencePool(processing, s3, plan)
    return _POOL


def pool_for(spec: BackendSpec, processing: Any, s3: S3Options | None, plan: ActorPlan) -> InferencePool:
    """The process's pool for these settings, its actors building the backend of `spec`."""
    pool = start_pool(processing, s3, plan)
    pool.configure(spec)
    return pool


def close_pool(wait: bool = True) -> None:
    """Shut the process's pool down (the next run starts a new one). With `wait`, return once its actors are
    gone (those still starting are killed when they have started: `_retire`)."""
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None
    if wait:
        _wait_for_retired()


def _alive(pool: InferencePool) -> bool:
    import ray

    if not pool.actors or not ray.is_initialized():
        return False
    return bool(ray.get_runtime_context().get_job_id() == pool.job_id)
