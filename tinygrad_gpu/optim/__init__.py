"""tg.optim: optimizers that update parameters in place on their device."""

from .optimizer import SGD, Adam, AdamW, Optimizer

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]
