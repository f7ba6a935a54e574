"""tg.nn: modules (state) in modules.py, their math in functional.py, initialisers in init.py."""

from ..function import no_grad
from . import functional, init, parallel
from .modules import (
    Activation,
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    Flatten,
    Linear,
    LogSoftmax,
    Module,
    MSELoss,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)

__all__ = ["Activation", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "Flatten", "Linear",
           "LogSoftmax", "MSELoss", "Module", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
           "functional", "init", "no_grad", "parallel"]
