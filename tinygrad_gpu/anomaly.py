"""Anomaly mode: stop at the first op that makes a NaN or an infinity, and say which user line made it.

Under ``detect_anomaly()`` every op's forward output and every gradient a backward returns is
checked; the first one holding NaN or inf raises ``AnomalyError``. Each recorded op also keeps
the file and line of the user code that created it (the innermost frame outside this package),
so an error found during backward still points at the forward line responsible.
When the mode is off, the engine pays one attribute check per op and captures nothing.
"""

from __future__ import annotations

import linecache
import os
import sys
import threading
from typing import Any

from .backend import array_module, device_of
from .scopes import ThreadSwitch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class AnomalyError(RuntimeError):
    """An op produced NaN or inf while detect_anomaly() was on; the message names the op and line."""


class _AnomalyMode(threading.local):
    enabled = False  # each thread starts with the mode off


anomaly_mode = _AnomalyMode()


class detect_anomaly(ThreadSwitch):
    """Context manager (and decorator): the first NaN or inf in a forward or backward raises AnomalyError.

    Per thread, like no_grad. It synchronises with the GPU after every op, so use it to debug.

        with tg.detect_anomaly():
            loss = model(x).log().sum()   # AnomalyError: Log produced NaN in its forward ... line
            loss.backward()
    """

    state = anomaly_mode

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = self.value = bool(enabled)


def is_anomaly_enabled() -> bool:
    """True when anomaly detection is on for this thread."""
    return anomaly_mode.enabled


def _user_site() -> tuple[str, int, str] | None:
    """(file, line, function) of the innermost frame outside this package."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return None if frame is None else (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)


def _describe_site(site: tuple[str, int, str] | None) -> str:
    if site is None:
        return "no user code on the stack"
    filename, line, function = site
    code = linecache.getline(filename, line).strip()
    return f"{filename}:{line} in {function}" + (f": {code}" if code else "")


def _non_finite(array: Any) -> str | None:
    """None when every element is finite, else what was found ("NaN", "inf" or "NaN and inf")."""
    from .jit import CaptureError, capture_state

    if capture_state.active:  # a CUDA graph being recorded cannot read values back: tg.jit runs eagerly
        raise CaptureError("detect_anomaly() reads every result back from the GPU; the step runs eagerly")
    if not hasattr(array, "dtype") or array.dtype.kind != "f":
        return None
    xp = array_module(device_of(array))
    if bool(xp.isfinite(array).all()):
        return None  # bool() of a device array waits for the GPU: the price of anomaly mode
    has_nan, has_inf = bool(xp.isnan(array).any()), bool(xp.isinf(array).any())
    return "NaN and inf" if has_nan and has_inf else ("NaN" if has_nan else "inf")


def _tainted(arrays: Any) -> bool:
    """True when one of the arrays (Python numbers and None skipped) already holds NaN or inf."""
    return any(_non_finite(a) for a in arrays if a is not None and not isinstance(a, (int, float)))


def check_forward(node: Any, arrays: list, result: Any) -> None:
    """Remember where `node` was created and raise AnomalyError if its output is not finite."""
    site = _user_site()
    node._created_at = site
    found = _non_finite(result)
    if found:
        raise AnomalyError(
            f"{node.name} produced {found} in its forward (output shape {tuple(result.shape)}); "
            f"{'an input already held NaN or inf' if _tainted(arrays) else 'its inputs were finite'}; "
            f"created at {_describe_site(site)}")


def check_backward(node: Any, grad_output: Any, input_grads: Any) -> None:
    """Raise AnomalyError if a gradient that `node`'s backward returned is not finite."""
    for index, grad in enumerate(input_grads):
        found = _non_finite(grad) if grad is not None else None
        if found:
            site = node.__dict__.get("_created_at", False)
            where = (_describe_site(site) if site is not False else
                     "an unknown line (the forward ran outside detect_anomaly(); run it inside to see it)")
            raise AnomalyError(
                f"{node.name} produced {found} in its backward (gradient for input {index}, shape "
                f"{tuple(grad.shape)}); the incoming gradient "
                f"{'already held NaN or inf' if _tainted([grad_output]) else 'was finite'}; "
                f"the op was created at {where}")
