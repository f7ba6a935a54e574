"""Losses and activations as functions (tg.nn.functional), composed from Tensor ops."""

from __future__ import annotations

from typing import Any

from .tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def mse_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error between input and target, which must have the same shape."""
    if not isinstance(input, Tensor):
        raise TypeError(f"mse_loss: input must be a Tensor (the prediction), got {type(input).__name__}")
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(target, Tensor):
        target = Tensor(target, device=input.device, dtype=input.dtype)
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} and target shape {target.shape} "
                         "differ; reshape one so they match")
    return _reduce((input - target) ** 2, reduction)


def relu(x: Tensor) -> Tensor:
    """max(x, 0)."""
    return x.relu()


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x))."""
    return x.sigmoid()


def tanh(x: Tensor) -> Tensor:
    """tanh(x)."""
    return x.tanh()
