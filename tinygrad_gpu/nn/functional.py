"""Losses and activations as functions (tg.nn.functional), composed from Tensor ops."""

from __future__ import annotations

from typing import Any

from .. import indexing, ops
from ..fusion import fuse
from ..tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


# one fused node each: the elementwise chain and its sum run as one kernel each way where they can
_squared_error = {"mean": fuse(lambda input, target: ((input - target) ** 2).mean()),
                  "sum": fuse(lambda input, target: ((input - target) ** 2).sum()),
                  "none": fuse(lambda input, target: (input - target) ** 2)}


def _check_reduction(name: str, reduction: str) -> None:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _target_like(name: str, input: Tensor, target: Any) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    if not isinstance(target, Tensor):
        target = Tensor(target, device=input.device, dtype=input.dtype)
    if input.shape != target.shape:
        raise ValueError(f"{name}: input shape {input.shape} and target shape {target.shape} differ; "
                         "reshape one so they match")
    return target


def mse_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error between input and target, which must have the same shape."""
    _check_reduction("mse_loss", reduction)
    return _squared_error[reduction](input, _target_like("mse_loss", input, target))


def relu(x: Tensor) -> Tensor:
    """max(x, 0)."""
    return x.relu()


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x))."""
    return x.sigmoid()


def tanh(x: Tensor) -> Tensor:
    """tanh(x)."""
    return x.tanh()


# ---- classification ---------------------------------------------------------------------------
def softmax(x: Tensor, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """exp(x) / sum(exp(x)) along dim (or axis; the last by default), stable for large inputs."""
    return x.softmax(dim, axis=axis)


def log_softmax(x: Tensor, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """log(softmax(x)) along dim (or axis; the last by default), stably (no log of an underflowed 0)."""
    return x.log_softmax(dim, axis=axis)


def nll_loss(log_probs: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of integer class labels, given log-probabilities.

    log_probs has shape (N, C), (C,) or (N, C, d1, ...); target holds labels in [0, C) with shape
    (N,), () or (N, d1, ...): a list, an integer array, or a Tensor of whole numbers. Labels held on
    the GPU are range-checked with one small read back to the host.
    """
    _check_reduction("nll_loss", reduction)
    if not isinstance(log_probs, Tensor):
        raise TypeError(f"nll_loss: input must be a Tensor, got {type(log_probs).__name__}")
    if log_probs.ndim == 0:
        raise ValueError("nll_loss: input must have a class dimension, got a 0-d tensor")
    class_axis = 0 if log_probs.ndim == 1 else 1
    n_classes = log_probs.shape[class_axis]
    target_shape = log_probs.shape[:class_axis] + log_probs.shape[class_axis + 1:]
    where = f"nll_loss (input shape {log_probs.shape}, dtype {log_probs.dtype})"
    labels = indexing.class_labels(target, n_classes, target_shape, log_probs.device, where)
    if log_probs.ndim > 2:  # classes last, then one row per labelled position
        order = (0,) + tuple(range(2, log_probs.ndim)) + (1,)
        rows = log_probs.transpose(*order).reshape(-1, n_classes)
    else:
        rows = log_probs.reshape(-1, n_classes)
    flat = labels.reshape(-1)
    key = (indexing.arange(flat.shape[0], log_probs.device), flat)
    picked = ops.Index.apply(rows, key=key, advanced=True).reshape(target_shape)
    return _reduce(-picked, reduction)


def cross_entropy(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy between logits (class axis 1, or 0 for a 1-d input) and integer labels."""
    _check_reduction("cross_entropy", reduction)
    if not isinstance(input, Tensor):
        raise TypeError(f"cross_entropy: input must be a Tensor of logits, got {type(input).__name__}")
    if input.ndim == 0:
        raise ValueError("cross_entropy: input must have a class dimension, got a 0-d tensor")
    return nll_loss(input.log_softmax(axis=0 if input.ndim == 1 else 1), target, reduction)


def binary_cross_entropy(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """-(t log p + (1 - t) log(1 - p)) for probabilities p in [0, 1]; each log is clamped at -100."""
    _check_reduction("binary_cross_entropy", reduction)
    target = _target_like("binary_cross_entropy", input, target)
    return _reduce(ops.BinaryCrossEntropy.apply(input, target), reduction)


def binary_cross_entropy_with_logits(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of sigmoid(input), in the stable form max(x, 0) - x t + log(1 + exp(-|x|))."""
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    target = _target_like("binary_cross_entropy_with_logits", input, target)
    return _reduce(ops.BinaryCrossEntropyWithLogits.apply(input, target), reduction)

