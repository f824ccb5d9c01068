"""A name -> object registry whose lookup error lists the valid names and the closest match."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from pipeline.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Ordered mapping of lowercase names to objects.

    Example:
        >>> sizes = Registry[int]("size")
        >>> sizes.register("small", 1)
        >>> sizes.get("small")
        1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        valid = ", ".join(self._items)
        close = difflib.get_close_matches(name, list(self._items), n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"Unknown {self.kind} {name!r}.{hint} Valid names: {valid}."

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
