"""Derivatives beyond backward(): tg.autograd.grad, and vjp, jvp, hvp, jacobian, hessian in functional."""

from . import functional
from .functional import grad

__all__ = ["functional", "grad"]
