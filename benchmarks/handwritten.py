"""Hand-written baselines: the benchmark networks as plain NumPy / CuPy code, with as few launches
as we can write by hand (fused elementwise kernels on the GPU, preallocated buffers, parameters
and gradients in one flat buffer each so the update is a single launch)."""

from __future__ import annotations

from typing import Any

import numpy as np


class NumpyKernels:
    """The elementwise pieces of a training step, in place with NumPy."""

    def __init__(self, n_outputs: int) -> None:
        self.inverse_n = 1.0 / n_outputs  # MSE averages over every output element

    def bias_relu(self, bias: Any, z: Any) -> None:
        """z = max(z + bias, 0), in place."""
        z += bias
        np.maximum(z, 0, out=z)

    def relu_backward(self, activation: Any, grad: Any) -> None:
        """grad = 0 where the ReLU output is 0, in place."""
        np.multiply(grad, activation > 0, out=grad)

    def head(self, kind: str, bias: Any, target: Any, z: Any, grad: Any) -> Any:
        """Finish the output layer in z (bias, sigmoid if asked); dLoss/dz into grad; return the MSE."""
        z += bias
        if kind == "sigmoid":
            np.reciprocal(1 + np.exp(-z), out=z)
        diff = z - target
        loss = np.vdot(diff, diff) * self.inverse_n
        scale = 2 * self.inverse_n
        if kind == "sigmoid":
            np.multiply(diff, z * (1 - z) * scale, out=grad)
        else:
            np.multiply(diff, scale, out=grad)
        return loss

    def sgd(self, lr: float, grads: Any, params: Any) -> None:
        """params -= lr * grads, in place."""
        params -= lr * grads


class CupyKernels:
    """The same pieces as NumpyKernels, each one CuPy kernel launch (the loss takes a second)."""

    def __init__(self, n_outputs: int) -> None:
        import cupy as cp

        self.inverse_n = 1.0 / n_outputs
        self._bias_relu = cp.ElementwiseKernel("T bias", "T z", "T v = z + bias; z = v > (T)0 ? v : (T)0",
                                               "hand_bias_relu")
        self._relu_backward = cp.ElementwiseKernel("T activation", "T grad",
                                                   "grad = activation > (T)0 ? grad : (T)0",
                                                   "hand_relu_backward")
        self._heads = {
            "sigmoid": cp.ElementwiseKernel(
                "T bias, T target, T scale", "T z, T grad",
                "T p = (T)1 / ((T)1 + exp(-(z + bias))); z = p; grad = scale * (p - target) * p * ((T)1 - p)",
                "hand_sigmoid_mse_backward"),
            "linear": cp.ElementwiseKernel(
                "T bias, T target, T scale", "T z, T grad",
                "z += bias; grad = scale * (z - target)", "hand_mse_backward"),
        }
        # the 1/n factor is baked into the kernel text: one launch for the whole loss
        self._mse = cp.ReductionKernel("T output, T target", "T loss",
                                       "(output - target) * (output - target)", "a + b",
                                       f"loss = a * {self.inverse_n!r}", "0", "hand_mse")
        self._sgd = cp.ElementwiseKernel("T grad, T lr", "T param", "param -= lr * grad", "hand_sgd")

    def bias_relu(self, bias: Any, z: Any) -> None:
        """z = max(z + bias, 0), in place."""
        self._bias_relu(bias, z)

    def relu_backward(self, activation: Any, grad: Any) -> None:
        """grad = 0 where the ReLU output is 0, in place."""
        self._relu_backward(activation, grad)

    def head(self, kind: str, bias: Any, target: Any, z: Any, grad: Any) -> Any:
        """Finish the output layer in z (bias, sigmoid if asked); dLoss/dz into grad; return the MSE."""
        self._heads[kind](bias, target, 2 * self.inverse_n, z, grad)
        return self._mse(z, target)

    def sgd(self, lr: float, grads: Any, params: Any) -> None:
        """params -= lr * grads, in place."""
        self._sgd(grads, lr, params)


class HandNetwork:
    """A Linear/ReLU stack with an MSE loss and plain SGD, trained by hand on NumPy or CuPy arrays.

    `params` are host arrays [weight0, bias0, weight1, bias1, ...] with weights shaped (out, in)
    as in PyTorch; `head` is "sigmoid" or "linear" (what follows the last Linear).
    """

    def __init__(self, params: list[np.ndarray], x: np.ndarray, y: np.ndarray, lr: float,
                 head: str, xp: Any) -> None:
        self.xp, self.lr, self.head_kind = xp, lr, head
        self.kernels = (NumpyKernels if xp is np else CupyKernels)(y.size)
        self.flat = xp.asarray(np.concatenate([p.ravel() for p in params]))
        self.grad_flat = xp.zeros_like(self.flat)
        self.params, self.grads = self._views(self.flat, params), self._views(self.grad_flat, params)
        self.weights, self.biases = self.params[0::2], self.params[1::2]
        self.weight_grads, self.bias_grads = self.grads[0::2], self.grads[1::2]
        self.x, self.y = xp.asarray(x), xp.asarray(y)
        batch = x.shape[0]
        # outputs[i] holds layer i's activation; deltas[i] the loss gradient at its pre-activation
        self.outputs = [xp.empty((batch, w.shape[0]), self.flat.dtype) for w in self.weights]
        self.deltas = [xp.empty_like(o) for o in self.outputs]
        self.loss: Any = None

    @staticmethod
    def _views(flat: Any, shapes_of: list[np.ndarray]) -> list[Any]:
        views, offset = [], 0
        for p in shapes_of:
            views.append(flat[offset:offset + p.size].reshape(p.shape))
            offset += p.size
        return views

    def step(self) -> None:
        """One training step: forward, loss, backward, update; nothing comes back to the host."""
        xp, k = self.xp, self.kernels
        last = len(self.weights) - 1
        inputs = self.x
        for i, (w, out) in enumerate(zip(self.weights, self.outputs)):
            xp.matmul(inputs, w.T, out=out)
            if i < last:
                k.bias_relu(self.biases[i], out)
            inputs = out
        self.loss = k.head(self.head_kind, self.biases[last], self.y, self.outputs[last], self.deltas[last])
        for i in range(last, -1, -1):
            delta = self.deltas[i]
            xp.matmul(delta.T, self.x if i == 0 else self.outputs[i - 1], out=self.weight_grads[i])
            delta.sum(axis=0, out=self.bias_grads[i])
            if i > 0:
                xp.matmul(delta, self.weights[i], out=self.deltas[i - 1])
                k.relu_backward(self.outputs[i - 1], self.deltas[i - 1])
        k.sgd(self.lr, self.grad_flat, self.flat)

    def parameters(self) -> list[np.ndarray]:
        """Host copies of the parameters, in the order they were given."""
        return [p.get() if hasattr(p, "get") else p.copy() for p in self.params]


def hand_layer_step(xp: Any, weight: np.ndarray, bias: np.ndarray, x: np.ndarray,
                    grad_output: np.ndarray) -> Any:
    """Forward and backward of one Linear layer (gradients of weight and bias) by hand, as a closure."""
    weight, bias, x, grad_output = (xp.asarray(a) for a in (weight, bias, x, grad_output))
    out = xp.empty((x.shape[0], weight.shape[0]), weight.dtype)
    weight_grad, bias_grad = xp.empty_like(weight), xp.empty_like(bias)

    def step() -> None:
        xp.matmul(x, weight.T, out=out)
        xp.add(out, bias, out=out)
        xp.matmul(grad_output.T, x, out=weight_grad)
        grad_output.sum(axis=0, out=bias_grad)

    return step
