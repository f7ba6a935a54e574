"""Derivatives beyond backward(): tg.autograd.grad and tg.autograd.functional (vjp, jvp, hvp, jacobian, hessian)."""

from . import functional
from .functional import grad

__all__ = ["functional", "grad"]
