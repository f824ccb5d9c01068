"""Connecting to Ray: an existing cluster when one is named, else a private local one started on demand."""

from __future__ import annotations

import logging
import os

_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
}
# For a Ray this process starts for itself (never for a cluster it joins): no token authentication (a private
# local Ray with no dashboard; Ray 2.60 would print a warning and write ~/.ray/auth_token), and room for more
# idle worker processes than CPUs: the inference actors and Ray Data's helper actors count against the default
# limit (the CPU count), above which Ray kills idle read/preprocess workers and starts new ones for every
# task.
LOCAL_RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_num_workers_soft_limit": str(max(16, 4 * (os.cpu_count() or 1))),
}
# When a node is lost, calls to the inference actor it held fail at once until Ray notices (health checks, up
# to ~15 s) and restarts the actor elsewhere. Spacing those retries out (5, 10, 20 s) keeps the few the run
# allows (run.INFERENCE_TASK_RETRIES) from being spent before then. Read by the driver, which submits the
# actor tasks.
NODE_LOSS_RETRY_ENV = {
    "RAY_task_actor_unavailable_retry_delay_base_ms": "5000",
    "RAY_task_actor_unavailable_retry_max_delay_ms": "60000",
}


def ensure_ray(address: str | None = None, verbose: bool = False) -> None:
    """Initialise Ray once per process.

    `address` (or RAY_ADDRESS, which `ray job submit` sets for its jobs) connects to that cluster; with
    neither, a local Ray is started with this machine's CPUs and no dashboard, whose processes all end with
    this one however it ends (`pipeline.ray_guard`). Call it on the main thread: Ray ties its daemons' lives
    to the thread that starts them. Ray Data's own progress bars stay off: the run reports its progress itself
    (`pipeline.progress`), from the parts it commits. `verbose` (`--verbose`): Ray's and Ray Data's INFO
    lines too, for a Ray that this call starts or joins.
    """
    import ray

    level = logging.INFO if verbose else logging.WARNING

    if not ray.is_initialized():
        # Read once, when Ray starts or connects: set them only then, not on every call (a process that
        # already runs Ray, a test session or a notebook, keeps its environment).
        for key, value in {**_QUIET_ENV, **NODE_LOSS_RETRY_ENV}.items():
            os.environ.setdefault(key, value)
        os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=level, log_to_driver=True)
        else:
            from pipeline import ray_guard

            for key, value in LOCAL_RAY_ENV.items():
                os.environ.setdefault(key, value)
            ray_guard.install()
            ray.init(include_dashboard=False, logging_level=level, log_to_driver=True)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(level)
    # "Progress bars disabled": on purpose (see above)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))
