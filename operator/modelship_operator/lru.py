"""A bounded, thread-safe mapping that forgets what was used least recently.

The operator keeps a few things for every ModelDeployment it has seen and for every
registry answer it shares (verified versions, alias polls, HTTP clients); with tens of
thousands of ModelDeployments, and names that come and go, each of those is an `LRU`
so that the process's memory has a ceiling. `functools.lru_cache` caches a function's
results; these hold state that callers read, update and drop, so they are mappings.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `maxsize` entries; adding one more drops the least recently used."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._data

    def get(self, key: K) -> V | None:
        """The value of `key` (now the most recently used), or None."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def peek(self, key: K) -> V | None:
        """The value of `key`, or None, without counting as a use."""
        with self._lock:
            return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self._trim_locked()

    def setdefault(self, key: K, make: Callable[[], V]) -> V:
        """The value of `key`; made by `make()` and stored when absent (atomically)."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                value = self._data[key] = make()
                self._trim_locked()
            else:
                self._data.move_to_end(key)
            return value

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._data.pop(key, None)

    def _trim_locked(self) -> None:
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)
