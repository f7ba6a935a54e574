"""Dropout: zeroes elements at random while training, the identity in eval mode."""

from __future__ import annotations

from ..tensor import Tensor
from . import functional as F
from .modules import Module


class Dropout(Module):
    """Zero each element with probability p in training and scale the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.5) -> None:
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
