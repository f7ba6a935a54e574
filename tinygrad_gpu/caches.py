"""Bounded caches: compiled kernels, traced programs and reused arrays are kept least-recently-used;
the state of a decorated method is kept per instance, only while the instance lives.

Every cache of the package is an LRU with its bound stated beside it, so a long run that meets
many shapes (a new batch size each step) holds a fixed number of entries, not one per shape.
While tg.jit records a CUDA graph, whatever a cache hands out is also kept alive by that graph
(`keep_alive`): an evicted kernel must not be unloaded while a graph still launches it.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class _KeepAlive(threading.local):
    target: list | None = None  # while a graph is being recorded: the list that holds its objects


keep_alive = _KeepAlive()


class LRU:
    """A mapping of at most `maxsize` entries; adding one beyond that drops the least recently used."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"LRU: maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # writers only: threads share module-level caches

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for `key` (now the most recently used), or `default`."""
        # no lock on a look-up (one per kernel launch): each OrderedDict operation is atomic, and a
        # key another thread evicts between the two is simply not moved (the value is still good)
        entries = self._entries
        try:
            value = entries[key]
        except KeyError:
            return default
        try:
            entries.move_to_end(key)
        except (KeyError, RuntimeError):  # evicted, or the order changed meanwhile: left where it is
            pass
        if keep_alive.target is not None:
            keep_alive.target.append(value)
        return value

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The value for `key`, or `default`, leaving the order (and any graph being recorded) alone."""
        return self._entries.get(key, default)

    def __setitem__(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        if keep_alive.target is not None:
            keep_alive.target.append(value)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()


class PerInstance:
    """The per-instance state of a decorated method (tg.fuse, tg.jit), each kept only while its
    instance lives: keyed by id with a weak reference, so instances need not be hashable and
    are never kept alive by the decorator."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self._states: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, instance: Any, name: str) -> Any:
        """The state for `instance` (made on first use)."""
        key = id(instance)
        entry = self._states.get(key)
        if entry is not None and entry[0]() is instance:
            return entry[1]
        try:
            ref = weakref.ref(instance, functools.partial(self._forget, key))
        except TypeError:  # no weak references to it (e.g. __slots__ without __weakref__)
            raise TypeError(f"{name} is decorated on {type(instance).__name__}, whose instances take "
                            "no weak references; add '__weakref__' to its __slots__") from None
        state = self.make()
        self._states[key] = (ref, state)
        return state

    def _forget(self, key: int, ref: weakref.ref) -> None:
        entry = self._states.get(key)
        if entry is not None and entry[0] is ref:
            del self._states[key]

    def __len__(self) -> int:
        return len(self._states)
