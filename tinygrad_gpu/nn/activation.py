"""Activation modules with settings (their math is in functional.py, one kernel row each)."""

from __future__ import annotations

from . import functional as F
from .modules import Activation


class LeakyReLU(Activation):
    """x where x > 0, else negative_slope * x."""

    function = staticmethod(F.leaky_relu)

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = float(negative_slope)

    def settings(self) -> tuple:
        return (self.negative_slope,)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class ELU(Activation):
    """x where x > 0, else alpha * (exp(x) - 1)."""

    function = staticmethod(F.elu)

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)

    def settings(self) -> tuple:
        return (self.alpha,)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SiLU(Activation):
    """x * sigmoid(x)."""

    function = staticmethod(F.silu)


class Softplus(Activation):
    """log(1 + exp(beta * x)) / beta (x itself beyond threshold)."""

    function = staticmethod(F.softplus)

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta, self.threshold = float(beta), float(threshold)

    def settings(self) -> tuple:
        return (self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class GELU(Activation):
    """x * Phi(x), exact (approximate="none") or with the tanh approximation ("tanh")."""

    function = staticmethod(F.gelu)

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def settings(self) -> tuple:
        return (self.approximate,)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


__all__ = ["ELU", "GELU", "LeakyReLU", "SiLU", "Softplus"]
