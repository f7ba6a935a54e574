"""Conv2d: the layer's weights; the math (im2col and one matrix product) is functional.conv2d."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import windows
from ..tensor import Tensor
from . import functional as F
from .modules import Module, ReLU


class Conv2d(Module):
    """2-D convolution (cross-correlation) of (N, C, H, W) inputs, with PyTorch's parameters and init.

    weight has shape (out_channels, in_channels / groups, kh, kw) and bias (out_channels,), both drawn
    from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels / groups * kh * kw.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: str | None = None, dtype: Any = np.float32) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Conv2d: {name} must be a positive int, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must "
                             f"be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = windows.pair(kernel_size, "Conv2d: kernel_size", 1)
        self.stride = windows.pair(stride, "Conv2d: stride", 1)
        self.padding = (padding if padding in ("same", "valid")
                        else windows.pair(padding, "Conv2d: padding", 0))
        self.dilation = windows.pair(dilation, "Conv2d: dilation", 1)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Tensor.uniform(out_channels, in_channels // groups, *self.kernel_size, low=-bound,
                                     high=bound, device=device, dtype=dtype, requires_grad=True)
        self.bias = (Tensor.uniform(out_channels, low=-bound, high=bound, device=device, dtype=dtype,
                                    requires_grad=True) if bias else None)

    def forward(self, x: Tensor, activation: Module | None = None) -> Tensor:
        """The convolution, then `activation` if given (a ReLU runs in the same node)."""
        relu = activation is not None and self.fuses(activation)
        out = F._conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        relu)
        return out if relu or activation is None else activation(out)

    def fuses(self, activation: Module) -> bool:
        """True for a ReLU without hooks: a Sequential then runs it inside this layer's node."""
        return type(activation) is ReLU and activation.fusable()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}"
                + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + ("" if self.bias is not None else ", bias=False"))
