"""Finite-difference gradient checking, in float64."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .gradient_diagnosis import diagnose_gradients
from .tensor import Tensor


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its finite-difference estimate."""


def _tolerance(name: str, value: Any, allow_zero: bool = True) -> float:
    """A finite, non-negative (eps: positive) real setting as a float, or an error naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"gradcheck: {name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"gradcheck: {name} must be finite and {'at least 0' if allow_zero else 'above 0'}, "
                         f"got {value!r}")
    return number


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, locate: bool = False) -> bool:
    """Compare backward() with central differences for every input that requires grad.

    The inputs are copied to float64 first. A non-scalar output is reduced with a fixed random
    weighting, so every output element takes part. Returns True or raises GradcheckError; with
    locate=True its message also names the nodes whose own backward is wrong (diagnose_gradients).
    """
    eps = _tolerance("eps", eps, allow_zero=False)
    atol, rtol = _tolerance("atol", atol), _tolerance("rtol", rtol)
    inputs64 = [Tensor(t.numpy().astype(np.float64), device=t.device, requires_grad=t.requires_grad)
                if isinstance(t, Tensor) else t for t in inputs]
    checked = [i for i, t in enumerate(inputs64) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    out = fn(*inputs64)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    weights = np.random.default_rng(1234).uniform(0.5, 1.5, out.shape)
    out.backward(Tensor(weights, device=out.device, dtype=np.float64))

    def weighted_output() -> float:
        value = fn(*inputs64).numpy().astype(np.float64)
        return float(np.sum(value * weights))

    for index in checked:
        tensor = inputs64[index]
        analytic = (tensor.grad.numpy() if tensor.grad is not None else np.zeros(tensor.shape))
        original = tensor.numpy()
        numeric = np.zeros(tensor.shape)
        for element in np.ndindex(*tensor.shape):
            probe = original.copy()
            probe[element] += eps
            tensor.array[...] = Tensor(probe, device=tensor.device, dtype=np.float64).array
            plus = weighted_output()
            probe[element] -= 2 * eps
            tensor.array[...] = Tensor(probe, device=tensor.device, dtype=np.float64).array
            minus = weighted_output()
            numeric[element] = (plus - minus) / (2 * eps)
        tensor.array[...] = Tensor(original, device=tensor.device, dtype=np.float64).array
        bad = ~np.isclose(analytic, numeric, rtol=rtol, atol=atol)
        if bad.any():
            element = tuple(int(i) for i in np.argwhere(bad)[0])
            message = (f"gradcheck: input {index} (shape {tensor.shape}), element {element}: "
                       f"analytic {float(analytic[element])!r} != numeric {float(numeric[element])!r} "
                       f"(atol={atol}, rtol={rtol}; {int(bad.sum())} of {bad.size} elements differ)")
            if locate:
                message += "\n" + str(diagnose_gradients(fn, inputs, eps=eps, atol=atol, rtol=rtol))
            raise GradcheckError(message)
    return True
