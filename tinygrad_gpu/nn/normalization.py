"""Normalisation layers: BatchNorm1d/2d (running statistics as buffers) and LayerNorm."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..backend import array_module
from ..tensor import Tensor
from . import functional as F
from .modules import Module


class _BatchNorm(Module):
    """Normalise each channel (axis 1) by batch statistics in training, running ones in eval."""

    expected_ndim: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: str | None = None,
                 dtype: Any = np.float32) -> None:
        name = type(self).__name__
        if (not isinstance(num_features, (int, np.integer)) or isinstance(num_features, bool)
                or num_features <= 0):
            raise ValueError(f"{name}: num_features must be a positive int, got {num_features!r}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        device = backend.check_device(device) if device is not None else backend.default_device()
        xp = array_module(device)
        self.weight = self.bias = None
        if affine:
            self.weight = Tensor.ones(num_features, device=device, dtype=dtype, requires_grad=True)
            self.bias = Tensor.zeros(num_features, device=device, dtype=dtype, requires_grad=True)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor.zeros(num_features, device=device, dtype=dtype))
            self.register_buffer("running_var", Tensor.ones(num_features, device=device, dtype=dtype))
            self.register_buffer("num_batches_tracked", Tensor._from_array(xp.zeros((), np.int64)))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in self.expected_ndim:
            ranks = " or ".join(map(str, self.expected_ndim))
            raise ValueError(f"{type(self).__name__}: expected a {ranks}-d input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): input has {x.shape[1]} channels "
                             f"(shape {x.shape})")
        # eval mode uses the running statistics, unless there are none (track_running_stats=False)
        batch_stats = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, batch_stats,
                            self.momentum, self.eps, self.num_batches_tracked)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs."""

    expected_ndim = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs."""

    expected_ndim = (4,)


class LayerNorm(Module):
    """Normalise over the last axes (normalized_shape), then scale and shift elementwise."""

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device: str | None = None, dtype: Any = np.float32) -> None:
        shape = ((normalized_shape,) if isinstance(normalized_shape, (int, np.integer))
                 else tuple(normalized_shape))
        if not shape or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be positive ints, got {normalized_shape!r}")
        self.normalized_shape, self.eps = tuple(int(n) for n in shape), float(eps)
        self.elementwise_affine = elementwise_affine
        self.weight = (Tensor.ones(*self.normalized_shape, device=device, dtype=dtype, requires_grad=True)
                       if elementwise_affine else None)
        self.bias = (Tensor.zeros(*self.normalized_shape, device=device, dtype=dtype, requires_grad=True)
                     if elementwise_affine and bias else None)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
