"""Parameter initialisers (tg.nn.init), in place, following PyTorch's formulas.

Values are drawn on the host from the generator that tg.manual_seed seeds, then copied to the
tensor's device, so a seed gives the same weights on the CPU and the GPU.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..backend import move
from ..tensor import Tensor, random_generator

_LINEAR_GAIN = ("linear", "identity", "conv1d", "conv2d", "conv3d", "sigmoid")


def _fill(tensor: Tensor, host: np.ndarray) -> Tensor:
    """Copy host values into the tensor's storage (not recorded in any graph); returns the tensor."""
    with np.errstate(over="ignore"):  # draws beyond float32's range become ±inf, quietly
        values = host.astype(tensor.dtype, copy=False)
    tensor.array[...] = move(values, tensor.device)
    tensor._bump_version()  # graphs that saved the old values refuse backward()
    return tensor


def _check(name: str, tensor: Tensor) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: takes a Tensor, got {type(tensor).__name__}")
    tensor._check_writable(name)


def finite_setting(name: str, value: Any) -> float:
    """A finite real number as a float, or a TypeError/ValueError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value}")
    return number


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table): relu sqrt(2), tanh 5/3, ..."""
    if nonlinearity in _LINEAR_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else finite_setting("calculate_gain: negative slope", param)
        return math.sqrt(2.0 / (1 + slope * slope))  # a huge slope gives inf, not OverflowError
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel): in * prod(kernel), out * prod(kernel)."""
    if tensor.ndim < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, got shape "
                         f"{tensor.shape}")
    receptive_field = int(np.prod(tensor.shape[2:]))
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field


def _fan(name: str, tensor: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{name}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise ValueError(f"{name}: {mode} of a tensor of shape {tensor.shape} is 0")
    return fan


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill with samples from U(a, b)."""
    _check("uniform_", tensor)
    a, b = finite_setting("uniform_: a", a), finite_setting("uniform_: b", b)
    if not a <= b:
        raise ValueError(f"uniform_: lower bound {a} is above upper bound {b}")
    return _fill(tensor, random_generator().uniform(a, b, tensor.shape))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill with samples from N(mean, std**2)."""
    _check("normal_", tensor)
    mean, std = finite_setting("normal_: mean", mean), finite_setting("normal_: std", std)
    if not std >= 0:
        raise ValueError(f"normal_: std must be >= 0, got {std}")
    return _fill(tensor, random_generator().normal(mean, std, tensor.shape))


def constant_(tensor: Tensor, value: float) -> Tensor:
    """Fill with `value`."""
    _check("constant_", tensor)
    if not isinstance(value, numbers.Real):  # fill(None) would quietly write NaN
        raise TypeError(f"constant_: value must be a real number, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"constant_: value {value} is too large for a float") from None
    with np.errstate(over="ignore"):  # beyond float32's range becomes ±inf, quietly, as _fill does
        tensor.array.fill(value)
    tensor._bump_version()
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    """Fill with 0."""
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor) -> Tensor:
    """Fill with 1."""
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Glorot uniform: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    _check("xavier_uniform_", tensor)
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    if tensor.size == 0:
        return tensor  # nothing to fill (and no fan to divide by)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(tensor, random_generator().uniform(-bound, bound, tensor.shape))


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    """Glorot normal: N(0, std**2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    _check("xavier_normal_", tensor)
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    if tensor.size == 0:
        return tensor  # nothing to fill (and no fan to divide by)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return _fill(tensor, random_generator().normal(0.0, std, tensor.shape))


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> Tensor:
    """He uniform: U(-b, b) with b = gain * sqrt(3 / fan); `a` is the leaky_relu negative slope."""
    _check("kaiming_uniform_", tensor)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan("kaiming_uniform_", tensor, mode))
    bound = math.sqrt(3.0) * std
    return _fill(tensor, random_generator().uniform(-bound, bound, tensor.shape))


def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> Tensor:
    """He normal: N(0, std**2) with std = gain / sqrt(fan)."""
    _check("kaiming_normal_", tensor)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan("kaiming_normal_", tensor, mode))
    return _fill(tensor, random_generator().normal(0.0, std, tensor.shape))
