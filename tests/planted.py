"""Functions with a planted mistake, shared by the tests that must catch it."""

import tinygrad_gpu as tg


class WrongSquare(tg.Function):
    """x**2 with a planted mistake: the backward forgets the factor 2."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return (gy * self.x,)
