"""Optimizers: each step updates every parameter in place on its device, one kernel per parameter."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import kernels as K
from .backend import array_module
from .tensor import Tensor


def _hyperparameter(name: str, value: Any) -> float:
    """A finite real number as a float, or a TypeError/ValueError naming the setting."""
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value}")
    return number


class Optimizer:
    """Holds the parameters to update; subclasses define step()."""

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self.params: list[Tensor] = []
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__} takes Tensors, got {type(p).__name__}")
            if not p.requires_grad or not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: every parameter must be a leaf tensor with "
                                 f"requires_grad=True (got shape {p.shape})")
            if all(p is not q for q in self.params):
                self.params.append(p)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        lr = _hyperparameter("learning rate", lr)
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = lr

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (set it to None)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay, as in PyTorch."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr)
        momentum = _hyperparameter("momentum", momentum)
        weight_decay = _hyperparameter("weight_decay", weight_decay)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {type(nesterov).__name__}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, bool(nesterov)
        self.buffers: list[Any] = [None] * len(self.params)

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.momentum == 0:
                K.SGD_STEP(p.grad.array, self.lr, self.weight_decay, out=(p.array,))
                continue
            if self.buffers[i] is None:
                # a zero buffer makes the first step buf = grad, as PyTorch's first step does
                self.buffers[i] = array_module(p.device).zeros_like(p.array)
            K.SGD_MOMENTUM_STEP(p.grad.array, self.lr, self.weight_decay, self.momentum,
                                int(self.nesterov), out=(p.array, self.buffers[i]))

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters and momentum buffers (by parameter index), ready for tg.save."""
        buffers = {str(i): Tensor._from_array(b) for i, b in enumerate(self.buffers) if b is not None}
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov, "buffers": buffers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what state_dict() returned; everything is checked before anything changes."""
        if not isinstance(state, Mapping):
            raise TypeError(f"SGD.load_state_dict: expected a dict, got {type(state).__name__}")
        keys = {"lr", "momentum", "weight_decay", "nesterov", "buffers"}
        if set(state) != keys or not isinstance(state["buffers"], Mapping):
            raise ValueError(f"SGD.load_state_dict: expected the keys {sorted(keys)} with a dict of buffers, "
                             f"got {sorted(map(str, state))}")
        # the constructor validates the hyperparameters exactly as it does for new optimizers
        checked = SGD(self.params, state["lr"], state["momentum"], state["weight_decay"], state["nesterov"])
        buffers: list[Any] = [None] * len(self.params)
        for key, value in state["buffers"].items():
            index = int(key) if isinstance(key, str) and key.isdigit() else -1
            if not 0 <= index < len(self.params):
                raise ValueError(f"SGD.load_state_dict: buffer {key!r} names no parameter "
                                 f"(this optimizer has {len(self.params)})")
            param, source = self.params[index], getattr(value, "dtype", None)
            if isinstance(source, np.dtype) and not np.can_cast(source, param.dtype, "safe"):
                raise ValueError(f"SGD.load_state_dict: buffer {key} is {source}, "
                                 f"its parameter {param.dtype}")
            array = Tensor(value, device=param.device, dtype=param.dtype).array
            if array.shape != param.shape:
                raise ValueError(f"SGD.load_state_dict: buffer {key} has shape {array.shape}, "
                                 f"its parameter {param.shape}")
            buffers[index] = array.copy()  # updated in place later: never alias the caller's array
        self.lr, self.momentum, self.weight_decay = checked.lr, checked.momentum, checked.weight_decay
        self.nesterov, self.buffers = checked.nesterov, buffers
