"""Per-thread switches (recording, anomaly mode) set for a block or a decorated function."""

from __future__ import annotations

import copy
import functools
from typing import Any


class ThreadSwitch:
    """Sets `state.enabled` (a threading.local) to `value` inside a `with` block or a decorated call.

    Both `@switch` and `@switch()` decorate.

    Subclasses name the state and the value; the previous value comes back afterwards, also when
    the block raises.
    """

    state: Any  # a threading.local with an `enabled` attribute
    value: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # `@no_grad` (no parentheses) hands the function straight to the class: decorate it with a
        # switch in its default setting; `no_grad()` and `detect_anomaly(False)` make a switch as usual
        switch = super().__new__(cls)
        if len(args) == 1 and not kwargs and callable(args[0]):
            switch.__init__()
            return switch(args[0])
        return switch

    def __enter__(self) -> ThreadSwitch:
        self._previous = self.state.enabled
        self.state.enabled = self.value
        return self

    def __exit__(self, *exc: Any) -> None:
        self.state.enabled = self._previous

    def __call__(self, fn: Any) -> Any:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}() decorates a function, got {type(fn).__name__}")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with copy.copy(self):  # a fresh switch per call: calls may nest or run in threads
                return fn(*args, **kwargs)
        return wrapper
