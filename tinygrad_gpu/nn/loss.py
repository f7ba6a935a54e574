"""Regression and distribution losses as modules (the math is in functional.py)."""

from __future__ import annotations

from . import functional as F
from .modules import _Loss


class L1Loss(_Loss):
    """Mean absolute error: mean(|input - target|)."""

    function = staticmethod(F.l1_loss)


class HuberLoss(_Loss):
    """Quadratic below delta, linear above it."""

    function = staticmethod(F.huber_loss)

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction, delta=delta)


class SmoothL1Loss(_Loss):
    """Huber's loss divided by beta."""

    function = staticmethod(F.smooth_l1_loss)

    def __init__(self, reduction: str = "mean", beta: float = 1.0) -> None:
        super().__init__(reduction, beta=beta)


class KLDivLoss(_Loss):
    """KL divergence of log-probabilities from a target distribution (log_target: target is in logs)."""

    function = staticmethod(F.kl_div)

    def __init__(self, reduction: str = "mean", log_target: bool = False) -> None:
        super().__init__(reduction, log_target=log_target)
