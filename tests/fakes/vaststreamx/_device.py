"""Dies, the per-thread current device, and card enumeration."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

DIE_IDS_ENV = "VSX_FAKE_DIE_IDS"
DEFAULT_DIE_IDS = "0,1"
DIES_PER_CARD = 2  # a VA1-16G card: 2 dies x 8 GB
SET_DEVICE_FAILED = -1

_current = threading.local()
_initialised = threading.Event()  # set by the first successful set_device in this process ("init card")


def fake_die_ids() -> list[int]:
    """The dies this fake machine has: `VSX_FAKE_DIE_IDS` ("0,1" by default), read at every call."""
    return [int(v) for v in os.environ.get(DIE_IDS_ENV, DEFAULT_DIE_IDS).replace(",", " ").split()]


def set_device(device_id: int) -> int:
    """Bind `device_id` to this thread; 0 on success, -1 (and no change) for a die this machine lacks."""
    if isinstance(device_id, bool) or not isinstance(device_id, int):
        raise TypeError(f"set_device(): device_id must be an int, got {type(device_id).__name__}")
    if device_id not in fake_die_ids():
        return SET_DEVICE_FAILED
    _current.device_id = device_id
    _initialised.set()
    return 0


def require_initialised(what: str) -> None:
    """Refuse card queries before the runtime is initialised: both of Vastai's card_info samples call
    set_device(0) ("init card") before get_all_cards_count() / get_all_cards()."""
    if not _initialised.is_set():
        raise RuntimeError(f"{what}: the runtime is not initialised; call vaststreamx.set_device(0) first "
                           "(\"init card\", as VastStreamX-Samples samples/card_info does)")


def fake_reset_init() -> None:
    """Forget the process's initialisation (tests of the start-up order)."""
    _initialised.clear()


def current_device() -> int | None:
    """The calling thread's device, or None if this thread never called set_device successfully."""
    return getattr(_current, "device_id", None)


def require_device(what: str, device_id: int | None = None) -> int:
    """The thread's device; raise if none is set, or if it is not `device_id`."""
    current = current_device()
    if current is None:
        raise RuntimeError(f"{what}: no device is set in thread {threading.current_thread().name!r}; call "
                           "vaststreamx.set_device(die_id) in every thread that uses a die")
    if device_id is not None and current != device_id:
        raise RuntimeError(f"{what}: this thread's device is {current}, but the object lives on die "
                           f"{device_id}; call vaststreamx.set_device({device_id}) in this thread first")
    return current


@dataclass(frozen=True)
class DieInfo:
    device_id: int


@dataclass(frozen=True)
class Card:
    uuid: str
    card_type: str
    dies: tuple[DieInfo, ...]


def get_all_cards() -> list[Card]:
    """The configured dies, DIES_PER_CARD per card in id order (after set_device: `require_initialised`)."""
    require_initialised("get_all_cards()")
    ids = sorted(fake_die_ids())
    groups = [ids[i:i + DIES_PER_CARD] for i in range(0, len(ids), DIES_PER_CARD)]
    return [Card(f"fake-card-{n}", "VA1-16G", tuple(DieInfo(i) for i in group)) for n,
            group in enumerate(groups)]


def get_all_cards_count() -> int:
    require_initialised("get_all_cards_count()")
    return len(get_all_cards())
