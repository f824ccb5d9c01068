"""Test isolation: every test starts from the same process-wide state and leaves it as it found it.

Loaded by tests/conftest.py (`pytest_plugins`). What it guards, around every test:

* torch's intra-op and inter-op thread counts and its global numeric flags (grad mode, default dtype,
  deterministic algorithms, float32 matmul precision, oneDNN/cuDNN switches): oneDNN picks its kernels by
  thread count, and a kernel change moves logits by ~1e-6, enough to flip a near-tie pixel of an exactness
  test;
* the environment variables and the working directory;
* the Ray session: only tests that ask for the `ray_session` fixture may start Ray in this process, and each
  of those must give every Ray CPU back when it ends (no actor left alive, no killed actor's process left
  holding its CPUs): a test that leaves them held would make every later run wait for CPUs forever.

A test (or a function-scoped fixture) that changes one of these and does not put it back is failed at teardown
with the list of what changed, and the state is restored, so that one leak does not cascade into the tests
after it. State changed by a module- or session-scoped fixture is checked against the session's baseline after
the last test of each module and reported the same way; a session fixture that changes state on purpose for
the whole session (`ray_session`: starting Ray sets PYTHONBREAKPOINT in the driver) declares it with
`session_state`.

Random number generators are not compared (any draw changes them): each test instead starts from fixed seeds
for Python's `random`, numpy's legacy global generator and torch's default generator, set before its fixtures
run. (With `-p randomly`, pytest-randomly re-seeds `random` and numpy with its own seed; torch stays fixed.)
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

SEED = 0
RAY_CPU_RETURN_SECONDS = 30.0  # how long a test's actors may take to be gone after it ends
IGNORED_ENVIRON = frozenset({"PYTEST_CURRENT_TEST"})  # pytest's own, rewritten at every phase
# Set once per process by a library on first use, to a value that no test chooses: may appear, never change.
MEMOISED_ENVIRON = frozenset({
    "TORCHINDUCTOR_CACHE_DIR",  # torch._inductor (torch.utils.flop_counter, torch.onnx export)
    "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK",  # sklearn / joblib at import
})


def _torch_flags() -> dict[str, tuple[Callable[[], Any], Callable[[Any], None] | None]]:
    """name -> (getter, setter or None when the value cannot be put back in a running process)."""
    backends = torch.backends

    def attribute(module: Any, name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        return (lambda: getattr(module, name)), (lambda value: setattr(module, name, value))

    return {
        "torch.get_num_threads()": (torch.get_num_threads, torch.set_num_threads),
        # settable once, before the first parallel region: a change cannot be undone, only reported
        "torch.get_num_interop_threads()": (torch.get_num_interop_threads, None),
        "torch.is_grad_enabled()": (torch.is_grad_enabled, torch.set_grad_enabled),
        "torch.get_default_dtype()": (torch.get_default_dtype, torch.set_default_dtype),
        "torch.are_deterministic_algorithms_enabled()": (
            lambda: (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled()),
            lambda value: torch.use_deterministic_algorithms(value[0], warn_only=value[1])),
        "torch.get_float32_matmul_precision()": (torch.get_float32_matmul_precision,
                                                 torch.set_float32_matmul_precision),
        "torch.backends.mkldnn.enabled": attribute(backends.mkldnn, "enabled"),
        "torch.backends.cudnn.enabled": attribute(backends.cudnn, "enabled"),
        "torch.backends.cudnn.benchmark": attribute(backends.cudnn, "benchmark"),
        "torch.backends.cudnn.deterministic": attribute(backends.cudnn, "deterministic"),
        "torch.backends.opt_einsum.enabled": attribute(backends.opt_einsum, "enabled"),
    }


TORCH_FLAGS = _torch_flags()


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")  # a test that never imported Ray cannot have started it
    return bool(ray is not None and ray.is_initialized())


@dataclass(frozen=True)
class GlobalState:
    """A snapshot of the process-wide state tests must not leak."""

    torch: dict[str, Any]
    environ: dict[str, str]
    cwd: str
    ray: bool

    @classmethod
    def capture(cls) -> GlobalState:
        environ = {k: v for k, v in os.environ.items() if k not in IGNORED_ENVIRON}
        return cls(torch={name: get() for name, (get, _) in TORCH_FLAGS.items()}, environ=environ,
                   cwd=os.getcwd(), ray=_ray_initialized())

    def differences(self, later: GlobalState, *, ray: bool = True) -> list[str]:
        """What changed from this snapshot to `later`, one line each ("" list: nothing)."""
        out = [f"{name}: {self.torch[name]!r} -> {later.torch[name]!r}"
               for name in TORCH_FLAGS if self.torch[name] != later.torch[name]]
        for key in sorted(set(self.environ) | set(later.environ)):
            before, after = self.environ.get(key), later.environ.get(key)
            if before != after and not (before is None and key in MEMOISED_ENVIRON):
                out.append(f"os.environ[{key!r}]: {_shown(key, before)} -> {_shown(key, after)}")
        if self.cwd != later.cwd:
            out.append(f"os.getcwd(): {self.cwd!r} -> {later.cwd!r}")
        if ray and self.ray != later.ray:
            out.append(f"ray.is_initialized(): {self.ray} -> {later.ray} (start Ray through the "
                       "`ray_session` fixture, which every test shares and which shuts it down at the end)")
        return out

    def restore(self) -> None:
        """Put the torch flags, environment and working directory back (the Ray session is left alone)."""
        for name, (get, set_) in TORCH_FLAGS.items():
            if set_ is not None and get() != self.torch[name]:
                set_(self.torch[name])
        for key in set(os.environ) - set(self.environ) - IGNORED_ENVIRON - MEMOISED_ENVIRON:
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)


def _shown(key: str, value: str | None) -> str:
    """An environment value for a report: credentials are not printed."""
    if value is None:
        return "<unset>"
    secret = any(word in key.upper() for word in ("SECRET", "TOKEN", "PASSWORD", "KEY_ID"))
    return "<set>" if secret else repr(value)


def seed_everything(seed: int = SEED) -> None:
    """Fixed seeds for `random`, numpy's global generator and torch's default generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_baseline: GlobalState | None = None


@contextmanager
def session_state() -> Iterator[GlobalState]:
    """Wraps the set-up of a session-scoped fixture that changes process state on purpose and for the whole
    session (starting Ray sets PYTHONBREAKPOINT in the driver): the changes made inside become the baseline
    every module is checked against. Its tear-down should call `restore_session_state` with the state
    `session_state` yields."""
    global _baseline
    before = GlobalState.capture()
    yield before
    _baseline = GlobalState.capture()


def restore_session_state(before: GlobalState) -> None:
    """At a session fixture's tear-down: restore the state from before its set-up and make it the baseline."""
    global _baseline
    before.restore()
    _baseline = GlobalState.capture()


def _leak_message(what: str, changes: list[str]) -> str:
    return (f"{what} changed process-wide state and did not restore it (restored now):\n  "
            + "\n  ".join(changes)
            + "\nUse monkeypatch.setenv/chdir, or restore the value in a finally/fixture teardown "
              "(torch.set_num_threads is process-wide: see tests/isolation.py).")


def pytest_collection_finish(session: pytest.Session) -> None:
    """The baseline: after collection, whose imports may set variables (sklearn/joblib set KMP_*) once."""
    global _baseline
    _baseline = GlobalState.capture()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    seed_everything()  # before any fixture of this test is set up, higher-scoped ones included


@pytest.fixture(autouse=True)
def _no_leaked_global_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test whose body or function-scoped fixtures leave global state changed (see module docstring).

    Higher-scoped fixtures (`ray_session` among them) are set up before this one, so the Ray a test asked for
    is already running in `before`; a test that starts Ray without asking shows up as a change.
    """
    before = GlobalState.capture()
    yield
    changes = before.differences(GlobalState.capture())
    if changes:
        before.restore()
        pytest.fail(_leak_message(request.node.nodeid, changes), pytrace=False)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the last test of a module (its module-scoped fixtures are gone): back at the session baseline?"""
    result = yield
    module = getattr(item, "module", None)
    if _baseline is None or (nextitem is not None and getattr(nextitem, "module", None) is module):
        return result
    now = GlobalState.capture()
    changes = _baseline.differences(now, ray=False)  # the shared Ray session outlives modules by design
    if changes:
        _baseline.restore()
        where = getattr(module, "__name__", item.nodeid)
        pytest.fail(_leak_message(f"A module- or session-scoped fixture used by {where}", changes),
                    pytrace=False)
    return result


@pytest.fixture(autouse=True)
def _ray_cpus_given_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test on the shared Ray session that leaves some of its CPUs held, and frees them."""
    yield
    if "ray_session" not in request.fixturenames or not _ray_initialized():
        return
    import ray

    deadline = time.monotonic() + RAY_CPU_RETURN_SECONDS
    while _held_cpus(ray) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed actor's CPUs come back within a few hundred ms
    held = _held_cpus(ray)
    if held <= 0:
        return
    alive, dead = _actor_processes()
    from pipeline.pool import close_pool

    close_pool()
    for pid in dead:  # a killed actor whose process lived on (what pipeline.pool._retire prevents)
        os.kill(pid, 9)
    pytest.fail(f"{request.node.nodeid} left {held:g} of Ray's CPUs held {RAY_CPU_RETURN_SECONDS:.0f} s "
                f"after it ended. Actors alive: {alive or 'none'}; processes of actors Ray reports dead, "
                f"killed now: {dead or 'none'}. Close the pools and kill the actors a test starts.",
                pytrace=False)


def _held_cpus(ray: Any) -> float:
    return float(ray.cluster_resources().get("CPU", 0.0)) - float(ray.available_resources().get("CPU", 0.0))


def _actor_processes() -> tuple[list[str], list[int]]:
    """The alive actors (class and pid), and the pids of dead actors whose worker process still runs here."""
    import psutil
    from ray._private import state

    alive: list[str] = []
    dead: list[int] = []
    for actor in state.actors().values():
        pid = int(actor.get("Pid") or 0)
        if actor.get("State") == "ALIVE":
            alive.append(f"{actor.get('ActorClassName')} (pid {pid})")
        elif actor.get("State") == "DEAD" and pid and psutil.pid_exists(pid):
            try:
                if "ray::" in " ".join(psutil.Process(pid).cmdline()):
                    dead.append(pid)
            except psutil.Error:
                pass
    return alive, dead
