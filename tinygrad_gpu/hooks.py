"""Engine hooks: code that runs when a leaf's gradient is final, and when backward() ends.

Data parallelism needs both: a parameter's gradient can be sent to the other processes as soon as
backward has finished adding into it, and the last buckets must be flushed when backward ends.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

# id(leaf tensor) -> its hooks, in registration order; a finalizer drops the entry with the tensor.
# Keyed by identity, not by a WeakKeyDictionary: that compares keys with ==, elementwise for tensors.
post_accumulate: dict[int, list] = {}
# callbacks queued during the running backward(), called once when it ends
end_of_backward: list = []

# how many nodes backward has run, counted while post-accumulate hooks exist: two leaves whose
# hooks see one count got their gradients from the same node's backward
backward_nodes = 0


class RemovableHandle:
    """Returned by a hook registration; remove() unregisters the hook."""

    def __init__(self, hooks: list, hook: Callable[..., Any]) -> None:
        self._hooks, self._hook = hooks, hook

    def remove(self) -> None:
        """Unregister the hook (a second call does nothing)."""
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)
        if not self._hooks:  # no hook left on that tensor: backward goes back to its plain order
            for key, hooks in list(post_accumulate.items()):
                if hooks is self._hooks:
                    del post_accumulate[key]


def register_post_accumulate(tensor: Any, hook: Callable[[Any], None]) -> RemovableHandle:
    """Call hook(tensor) after backward() has accumulated this leaf's gradient."""
    if not callable(hook):
        raise TypeError(f"register_post_accumulate_grad_hook: expected a callable, got {type(hook).__name__}")
    if not tensor.requires_grad or tensor.grad_fn is not None:
        raise RuntimeError("register_post_accumulate_grad_hook: only a leaf tensor that requires grad "
                           "accumulates a gradient (this one is "
                           f"{'not a leaf' if tensor.grad_fn is not None else 'without requires_grad'})")
    key = id(tensor)
    hooks = post_accumulate.get(key)
    if hooks is None:
        hooks = post_accumulate[key] = []
        weakref.finalize(tensor, post_accumulate.pop, key, None)
    hooks.append(hook)
    return RemovableHandle(hooks, hook)


def run_post_accumulate(tensor: Any) -> None:
    """Call the hooks of a leaf whose gradient this backward() has finished accumulating."""
    for hook in tuple(post_accumulate.get(id(tensor), ())):
        hook(tensor)


def queue_end_of_backward(callback: Callable[[], None]) -> None:
    """Call callback() once, when the running backward() has visited every node."""
    end_of_backward.append(callback)


def run_end_of_backward() -> None:
    """Call (and forget) the callbacks queued during this backward()."""
    callbacks = end_of_backward[:]
    end_of_backward.clear()
    for callback in callbacks:
        callback()
