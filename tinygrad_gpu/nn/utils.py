"""Gradient clipping, in place on the device: clip_grad_norm_ and clip_grad_value_ (PyTorch's names).

clip_grad_norm_ returns the total norm as a 0-d tensor and scales the gradients by a factor
computed on the device, so a training step that clips reads nothing back (and can be captured).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import kernels as K
from ..combine import stack
from ..function import no_grad
from ..tensor import Tensor


def _gradients(name: str, parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    """The gradients of `parameters` that have one, checked: Tensors, floating point, one device."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}: parameters must be Tensors, got {type(p).__name__}")
    grads = [p.grad for p in params if p.grad is not None]
    for g in grads:
        if np.dtype(g.dtype).kind != "f":
            raise TypeError(f"{name}: gradients must be floating point, got {g.dtype} of shape {g.shape}")
    devices = sorted({g.device for g in grads})
    if len(devices) > 1:
        raise ValueError(f"{name}: every gradient must be on one device, got {devices}")
    return grads


def _real(name: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise TypeError(f"{name}: {what} must be a real number, got {value!r}")
    return float(value)


def _norm(x: Tensor, norm_type: float) -> Tensor:
    """The norm of all of x's elements, as a 0-d tensor (an empty x has norm 0)."""
    if x.size == 0:
        return Tensor._from_array(x.array.sum() * 0)
    if norm_type == math.inf:
        return x.abs().max()
    if norm_type == 2.0:
        return (x * x).sum().sqrt()
    if norm_type == 1.0:
        return x.abs().sum()
    return (x.abs() ** norm_type).sum() ** (1.0 / norm_type)


def _scale_in_place(grad: Tensor, factor: Tensor) -> None:
    factor = factor.array if factor.dtype == grad.dtype else factor.array.astype(grad.dtype)
    _store(grad, K.MUL(grad.array, factor))


def _store(grad: Tensor, values: Any) -> None:
    """`values` written into the gradient's own buffer (a device copy), or replacing a read-only one."""
    if getattr(grad.array.flags, "writeable", True):
        grad.array[...] = values
    else:
        grad.array = values


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """Scale the gradients in place so that their total norm is at most max_norm; returns the total norm.

    The norm is over all gradients together, as if concatenated; `inf` is the largest magnitude.
    The scale max_norm / (norm + 1e-6), clamped at 1, is computed on the device: nothing is read
    back unless error_if_nonfinite asks to check the norm. `foreach` is accepted for PyTorch
    compatibility: gradients are always handled together.
    """
    name = "clip_grad_norm_"
    max_norm = _real(name, "max_norm", max_norm)
    norm_type = _real(name, "norm_type", norm_type)
    if not norm_type > 0:
        raise ValueError(f"{name}: norm_type must be > 0 or inf, got {norm_type}")
    grads = _gradients(name, parameters)
    if not grads:
        return Tensor(0.0)
    with no_grad():
        norms = [_norm(g, norm_type) for g in grads]
        dtype = np.result_type(*[n.dtype for n in norms])
        norms = [n if n.dtype == dtype else Tensor._from_array(n.array.astype(dtype)) for n in norms]
        total = _norm(stack(norms), norm_type) if len(norms) > 1 else norms[0]
        if error_if_nonfinite and not math.isfinite(total.item()):
            raise RuntimeError(
                f"{name}: the total norm of order {norm_type} of the gradients is "
                f"{total.item()}, so they cannot be clipped; pass error_if_nonfinite=False "
                "to clip anyway"
            )
        factor = (max_norm / (total + 1e-6)).minimum(1.0)
        for g in grads:
            _scale_in_place(g, factor)
    return total


def clip_grad_value_(
    parameters: Tensor | Iterable[Tensor], clip_value: float, foreach: bool | None = None
) -> None:
    """Clip every gradient in place to [-clip_value, clip_value]."""
    name = "clip_grad_value_"
    clip_value = _real(name, "clip_value", clip_value)
    if clip_value < 0:
        raise ValueError(f"{name}: clip_value must be >= 0, got {clip_value}")
    for g in _gradients(name, parameters):
        _store(g, K.CLIP(g.array, -clip_value, clip_value))


__all__ = ["clip_grad_norm_", "clip_grad_value_"]
