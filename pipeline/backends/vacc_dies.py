"""Which VACC die an inference actor owns: a node-local claim that the kernel releases when the actor dies.

Ray only counts the `VACC` custom resource (one unit per die; `--actors-per-die K` makes each actor ask for
1/K of a unit); it does not tell an actor *which* die it got. So every actor claims one itself, on its own
node:

* The dies a node has are `VACC_DIE_IDS` (e.g. "0,1", set on the node by whoever starts it, to reserve dies or
  to work around an odd numbering) or else every die the SDK enumerates (`vsx.set_device(0)` to initialise the
  card, as the vendor's card_info samples do, then `vsx.get_all_cards()`; die ids are numbered across all
  cards of the node, card0 -> 0,1, card1 -> 2,3). The node's `VACC` resource count is not used for ids: it
  need not match the hardware's numbering, and Ray exposes custom-resource instance ids only through private
  APIs. It still bounds how many actors Ray places on the node.
* A claim is an exclusive `fcntl.flock` on `<lock dir>/die-<id>-slot-<k>.lock`, k < actors_per_die, held on an
  open file for the actor's whole life. Slots are tried slot-major (slot 0 of every die, then slot 1, ...), so
  actors spread over the dies before any die gets a second holder.
* The kernel drops a flock when its process ends, however it ends (`ray.kill`, OOM, a crash), so a restarted
  actor can claim the die again; `release()` drops it early when the backend is closed. A new actor retries
  for `vacc_claim_timeout_s` (default 10 s) before giving up, since Ray may schedule it while the process it
  replaces is still exiting.

The lock dir must be node-local (not NFS): `vacc_lock_dir` in the backend options, else `VACC_LOCK_DIR`, else
`<tmp>/unet-pipeline-vacc-locks`. Every process on the node that uses VACC dies through this pipeline must use
the same dir.
"""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
import time
from collections.abc import Sequence

from pipeline.errors import BackendUnavailable, ConfigError

DIE_IDS_ENV = "VACC_DIE_IDS"
LOCK_DIR_ENV = "VACC_LOCK_DIR"
DEFAULT_CLAIM_TIMEOUT_S = 10.0
RETRY_INTERVAL_S = 0.2


def default_lock_dir() -> str:
    return os.environ.get(LOCK_DIR_ENV) or os.path.join(tempfile.gettempdir(), "unet-pipeline-vacc-locks")


def resource_share(actors_per_die: int) -> float:
    """The amount of the Ray resource `VACC` one actor requests: 1/K, rounded down to Ray's 0.0001 precision
    so that K actors always fit on one die."""
    check_actors_per_die(actors_per_die)
    return math.floor(10_000 / actors_per_die) / 10_000


def check_cluster_offers_dies(actors_per_die: int) -> None:
    """Fail now, not in a silent wait for actors that can never be placed, when the connected Ray cluster
    declares no `VACC` resource (a Ray that unet-pipeline starts by itself never does)."""
    import ray

    if float(ray.cluster_resources().get("VACC", 0.0)) < resource_share(actors_per_die):
        raise BackendUnavailable(
            "The Ray cluster declares no VACC resource, so no VACC actor could ever be placed. Start every "
            "node that has VACC cards with its number of dies as the VACC resource, e.g. `ray start --head "
            "--resources='{\"VACC\": 2}'`, and run with --address auto (or RAY_ADDRESS); a Ray that "
            "unet-pipeline starts by itself has CPUs only.")


def check_actors_per_die(actors_per_die: int) -> None:
    if isinstance(actors_per_die, bool) or not isinstance(actors_per_die,
                                                          int) or not 1 <= actors_per_die <= 10_000:
        raise ConfigError(f"--actors-per-die must be a whole number from 1 to 10000, got {actors_per_die!r}.")


def parse_die_ids(text: str) -> list[int]:
    """`VACC_DIE_IDS` ("2,3" or "2 3") -> [2, 3]."""
    try:
        ids = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"{DIE_IDS_ENV}={text!r} is not a list of die ids: write it as e.g. 0,1.") from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"{DIE_IDS_ENV}={text!r} must list distinct die ids >= 0, e.g. 0,1.")
    return ids


INIT_DIE = 0  # the die the vendor's samples bind before listing cards ("init card")


def init_runtime(vsx) -> None:
    """Initialise the card runtime as both of Vastai's card-listing samples do, before any other SDK call:
    `set_device(0)` ("init card", VastStreamX-Samples samples/card_info/card_info.py and card_info.cpp).
    Die ids are numbered from 0 across the node's cards, so die 0 exists wherever a card does.

    Raises:
        BackendUnavailable: set_device(0) fails (no card, or no driver, on this node).
    """
    status = vsx.set_device(INIT_DIE)
    if status != 0:
        raise BackendUnavailable(
            f"vaststreamx.set_device({INIT_DIE}) returned {status} when initialising the VACC runtime: this "
            "node has no usable VACC card. Check the driver with `vasmi list` / `lsmod | grep vastai_pci`, "
            "or run the vacc actors only on nodes that declare the VACC resource.")


def node_die_ids(vsx) -> list[int]:
    """The dies this node offers: `VACC_DIE_IDS` if set, else every die the SDK enumerates, in id order.

    Enumerating follows the vendor's start-up order: `init_runtime` (set_device(0)) first, then
    `get_all_cards()`.
    """
    configured = os.environ.get(DIE_IDS_ENV, "").strip()
    if configured:
        return parse_die_ids(configured)
    init_runtime(vsx)
    ids = sorted(die.device_id for card in vsx.get_all_cards() for die in card.dies)
    if not ids:
        raise BackendUnavailable(
            "The VACC runtime lists no cards on this node (vaststreamx.get_all_cards() is empty): check the "
            "driver with `vasmi list` / `lsmod | grep vastai_pci`, or set VACC_DIE_IDS to the die ids to "
            "use.")
    return ids


class DieClaim:
    """An exclusive claim on one (die, slot) on this node, held until `release()` or the process's end."""

    def __init__(self, die_id: int, slot: int, path: str, fd: int) -> None:
        self.die_id = die_id
        self.slot = slot
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, die_ids: Sequence[int], actors_per_die: int, lock_dir: str,
                timeout_s: float = 0.0) -> DieClaim:
        """Claim the first free (die, slot), slot-major, retrying for up to `timeout_s` (a restarted actor can
        be scheduled while its predecessor's process is still exiting); BackendUnavailable if every one stays
        held.
        """
        check_actors_per_die(actors_per_die)
        try:
            os.makedirs(lock_dir, exist_ok=True)
        except OSError as err:
            raise BackendUnavailable(
                f"Cannot create the VACC lock dir {lock_dir} ({err}): set the backend option vacc_lock_dir "
                f"or {LOCK_DIR_ENV} to a writable node-local folder.") from err
        deadline = time.monotonic() + timeout_s
        while True:
            claim = cls._try_once(die_ids, actors_per_die, lock_dir)
            if claim is not None:
                return claim
            if time.monotonic() >= deadline:
                break
            time.sleep(RETRY_INTERVAL_S)
        raise BackendUnavailable(
            f"Every VACC die on this node is taken: dies {list(die_ids)} x {actors_per_die} actor(s) per die "
            f"are all claimed by live processes (lock files in {lock_dir}, each holding its owner's pid). "
            "Start fewer actors (--concurrency), share dies on purpose (--actors-per-die), or list more "
            f"dies in {DIE_IDS_ENV}.")

    @classmethod
    def _try_once(cls, die_ids: Sequence[int], actors_per_die: int, lock_dir: str) -> DieClaim | None:
        for slot in range(actors_per_die):
            for die_id in die_ids:
                path = os.path.join(lock_dir, f"die-{die_id}-slot-{slot}.lock")
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return cls(die_id, slot, path, fd)
        return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the claim (idempotent). Closing the file releases the flock."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __repr__(self) -> str:
        return f"DieClaim(die_id={self.die_id}, slot={self.slot}, held={self.held})"
