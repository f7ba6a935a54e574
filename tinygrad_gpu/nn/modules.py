"""Modules: Module, its containers, layers and losses, each a composition of Tensor ops."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .. import backend, ops
from .. import kernels as K
from ..fusion import fuse
from ..tensor import Tensor
from . import functional
from .parameter import Parameter


class Module:
    """Base class: parameters are Tensor attributes, found recursively in order.

    A Tensor attribute is a parameter when it was assigned as a Parameter or with requires_grad
    set; it stays one after requires_grad_(False) (frozen), so state_dict() still holds it.
    """

    training = True

    def __setattr__(self, name: str, value: Any) -> None:
        registered = self.__dict__.get("_parameter_names")
        if isinstance(value, Parameter) or (isinstance(value, Tensor) and value.requires_grad
                                            and value.is_leaf):
            if registered is None:  # made here: subclasses need not call Module.__init__
                registered = self.__dict__["_parameter_names"] = {}  # a dict: an ordered set
            registered[name] = None
            if type(value) is Tensor:  # marked in place (same object, same layout): a Parameter now,
                value.__class__ = Parameter  # so an optimizer still takes it once it is frozen
        elif registered is not None and name in registered and not isinstance(value, Tensor):
            del registered[name]  # e.g. `self.bias = None`: no longer a parameter
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self.__dict__.get("_parameter_names", {}).pop(name, None)
        object.__delattr__(self, name)

    def forward(self, *args: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any) -> Any:
        if K.quiet.depth:
            return self.forward(*args)
        with K.silenced_numpy():  # one errstate for the whole forward, not one per CPU kernel
            return self.forward(*args)

    def children(self) -> Iterator[tuple[str, Module]]:
        """(name, submodule) pairs, in the order they were assigned."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(dotted name, parameter) pairs, frozen ones included: own first, then each child's."""
        registered = vars(self).get("_parameter_names", ())
        for name, value in vars(self).items():
            # NOTE: requires_grad also counts, for tensors switched on after assignment
            if isinstance(value, Tensor) and (name in registered or value.requires_grad):
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(prefix + name + ".")

    def parameters(self) -> list[Tensor]:
        """Every parameter, in a stable order (each once)."""
        seen, result = set(), []
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                result.append(p)
        return result

    def zero_grad(self) -> None:
        """Forget every parameter's gradient."""
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> dict[str, Tensor]:
        """Parameter name -> detached tensor (sharing memory with the parameter), frozen ones included."""
        return {name: p.detach() for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy values (Tensors or arrays) into the parameters; checks every name, shape and dtype first.

        Real values are converted to the parameter's dtype (float64 is rounded to float32); other
        kinds (complex, strings) are refused. On any error no parameter has changed.
        """
        if not isinstance(state, Mapping):
            raise TypeError("load_state_dict: expected a dict of name -> Tensor/array, "
                            f"got {type(state).__name__}")
        own = dict(self.named_parameters())
        missing = [name for name in own if name not in state]
        unexpected = [name for name in state if name not in own]
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        converted = {}
        for name, value in state.items():
            param = own[name]
            source = getattr(value, "dtype", None)  # Tensors and NumPy/CuPy arrays have one
            if isinstance(source, np.dtype) and not np.can_cast(source, param.dtype, "same_kind"):
                raise ValueError(f"load_state_dict: {name} is {source} in the state but {param.dtype} in the "
                                 "model; only real numbers can be loaded into a parameter")
            array = Tensor(value, device=param.device, dtype=param.dtype).array
            if array.shape != param.shape:
                raise ValueError(f"load_state_dict: {name} has shape {array.shape} in the state "
                                 f"but {param.shape} in the model")
            param._check_writable(f"load_state_dict: parameter {name}")
            converted[name] = array
        for name, array in converted.items():  # nothing changes until everything was checked
            own[name].array[...] = array
            own[name]._bump_version()  # graphs that saved the old values refuse backward()

    def to(self, device: str) -> Module:
        """Move every parameter to `device` in place; returns self."""
        device = backend.check_device(device)
        for p in self.parameters():
            moved = backend.move(p.array, device)
            if moved is not p.array:  # a graph that saved the old array must not backpropagate
                p.array = moved
                p._bump_version()
            if p.grad is not None:
                p.grad.array = backend.move(p.grad.array, device)
        return self

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({name}): " + repr(child).replace("\n", "\n  ")
                        for name, child in self.children())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self) -> str:
        """Settings shown in repr()."""
        return ""


class Linear(Module):
    """y = x @ weight.T + bias, weight (out, in) and bias (out,) drawn from U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: str | None = None, dtype: Any = np.float32) -> None:
        for size in (in_features, out_features):
            if not isinstance(size, (int, np.integer)) or isinstance(size, bool):
                raise TypeError(f"Linear sizes must be integers, got ({in_features!r}, {out_features!r})")
        if not 0 < in_features < 2**62 or not 0 < out_features < 2**62:
            raise ValueError(f"Linear needs positive sizes, got ({in_features}, {out_features})")
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(Tensor.uniform(out_features, in_features, low=-bound, high=bound,
                                               device=device, dtype=dtype))
        self.bias = (Parameter(Tensor.uniform(out_features, low=-bound, high=bound, device=device,
                                              dtype=dtype)) if bias else None)

    def forward(self, x: Tensor, activation: Activation | None = None) -> Tensor:
        """x @ weight.T + bias, then `activation` if given (fused with the bias add)."""
        if not isinstance(x, Tensor):  # an array or nested list, on this layer's device
            x = Tensor(x, device=self.weight.device, dtype=self.weight.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): expected input whose "
                             f"last dimension is {self.in_features}, got shape {x.shape}")
        if x.ndim == 1:  # one sample: through the 2-D product (whose backward needs 2-D), and back
            return self.forward(x.reshape(1, self.in_features), activation).reshape(self.out_features)
        if x.ndim > 2:  # leading dimensions are a batch: through the 2-D product, and back
            flat = self.forward(x.reshape(-1, self.in_features), activation)
            return flat.reshape(*x.shape[:-1], self.out_features)
        if activation is None and self.bias is None:
            return _product(x, self.weight)
        layer = _affine if activation is None else activation.after_linear(self.bias is not None)
        return layer(x, self.weight, self.bias) if self.bias is not None else layer(x, self.weight)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Sequential(Module):
    """Layers applied one after the other."""

    def __init__(self, *layers: Module) -> None:
        self.layers = list(layers)

    def children(self) -> Iterator[tuple[str, Module]]:
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def forward(self, x: Tensor) -> Tensor:
        layers, i = self.layers, 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, Linear) and isinstance(following, Activation):
                x = layer(x, following)  # product, bias and activation in one fused node
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)


def _product(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T, with weight in its (out, in) layout (no transpose node)."""
    return ops.MatMul.apply(x, weight, transpose_b=True)


_affine = fuse(lambda x, weight, bias: _product(x, weight) + bias)


class Activation(Module):
    """An elementwise activation. After a Linear in a Sequential, the layer's product, bias add
    and activation run as one fused node (tg.fuse of `function(x @ weight.T + bias)`): the same
    composition, one launch each way for small layers on the GPU.
    """

    _after_linear: dict[bool, fuse] | None = None

    @staticmethod
    def function(x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)

    @classmethod
    def after_linear(cls, bias: bool) -> fuse:
        """The fused (x, weight[, bias]) -> function(x @ weight.T [+ bias]) of this activation."""
        if cls.__dict__.get("_after_linear") is None:
            cls._after_linear = {
                True: fuse(lambda x, weight, bias: cls.function(_product(x, weight) + bias)),
                False: fuse(lambda x, weight: cls.function(_product(x, weight)))}
        return cls._after_linear[bias]


class ReLU(Activation):
    """max(x, 0)."""

    function = staticmethod(Tensor.relu)


class Sigmoid(Activation):
    """1 / (1 + exp(-x))."""

    function = staticmethod(Tensor.sigmoid)


class Tanh(Activation):
    """tanh(x)."""

    function = staticmethod(Tensor.tanh)


class _Loss(Module):
    """A loss module: its functional form, with the reduction ("mean", "sum" or "none") chosen once."""

    function: Any

    def __init__(self, reduction: str = "mean") -> None:
        self.reduction = reduction

    def forward(self, input: Tensor, target: Any) -> Tensor:
        return self.function(input, target, self.reduction)


class MSELoss(_Loss):
    """Mean squared error: mean((input - target) ** 2)."""

    function = staticmethod(functional.mse_loss)


# ---- classification losses and layers -----------------------------------------------------------
class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy between logits (N, C) and integer class labels (N,)."""

    function = staticmethod(functional.cross_entropy)


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities (e.g. the output of Sigmoid)."""

    function = staticmethod(functional.binary_cross_entropy)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits: Sigmoid and BCELoss in one numerically stable step."""

    function = staticmethod(functional.binary_cross_entropy_with_logits)


class Softmax(Module):
    """softmax along `axis`."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return x.softmax(self.axis)


class LogSoftmax(Module):
    """log_softmax along `axis`."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return x.log_softmax(self.axis)


class Flatten(Module):
    """Merge dimensions start_dim..end_dim (default: all but the batch dimension)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)
