"""Modules: Module, its containers, layers and losses, each a composition of Tensor ops."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import backend, interop, ops
from .. import kernels as K
from ..fusion import fuse
from ..tensor import Tensor, _pick
from . import functional
from .parameter import Parameter


class LoadResult(NamedTuple):
    """What load_state_dict(strict=False) could not match, as PyTorch reports it."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class RemovableHandle:
    """Returned by the register_*_hook methods: remove() unregisters the hook."""

    def __init__(self, hooks: dict, key: int) -> None:
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        """Unregister the hook (again is harmless)."""
        self._hooks.pop(self._key, None)


_hook_ids = itertools.count()


def _loadable(name: str, value: Any, dtype: np.dtype) -> Any:
    """A state-dict value as an array (or the value itself) that converts to `dtype` without changing:
    a float never becomes an integer, an integer only if it fits, complex and strings never."""
    if isinstance(value, Tensor):
        value = value.array
    elif not (isinstance(value, np.ndarray) or backend.is_cupy_array(value)) and hasattr(value, "__dlpack__"):
        detach = getattr(value, "detach", None)  # a PyTorch parameter exports only once detached
        value = interop.array_from_dlpack(detach() if callable(detach) else value, f"load_state_dict: {name}")
    source = getattr(value, "dtype", None)
    if not isinstance(source, np.dtype):  # Python numbers and lists: the dtype NumPy reads them as
        try:
            source = np.asarray(value).dtype
        except (ValueError, TypeError):
            return value  # the Tensor constructor says what is wrong with it
    where = f"load_state_dict: {name} is {source} in the state but {dtype} in the model"
    if source.kind not in "biuf":
        raise ValueError(f"{where}; only real numbers can be loaded into a parameter or buffer")
    if not np.can_cast(source, dtype, "same_kind"):
        raise ValueError(f"{where}; {source} values would change when converted to {dtype}")
    if source.kind in "iu" and dtype.kind in "iu" and not np.can_cast(source, dtype, "safe"):
        values = np.asarray(value) if not backend.is_cupy_array(value) else value
        info = np.iinfo(dtype)
        if values.size and not info.min <= int(values.min()) <= int(values.max()) <= info.max:
            raise ValueError(f"{where}; its values {int(values.min())}..{int(values.max())} do not fit")
    return value


class Module:
    """Base class: parameters are Tensor attributes, found recursively in order; buffers are
    registered with register_buffer; submodules are Module attributes (or containers).

    A Tensor attribute is a parameter when it was assigned as a Parameter or with requires_grad
    set; it stays one after requires_grad_(False) (frozen), so state_dict() still holds it.
    """

    training = True

    def __setattr__(self, name: str, value: Any) -> None:
        # a module kept in a plain list or dict would be invisible to parameters(), to() and
        # state_dict(): refuse it and point at the containers that register it
        items = (value.values() if isinstance(value, dict)
                 else value if isinstance(value, (list, tuple)) else ())
        if any(isinstance(item, Module) for item in items):
            kind = "dict" if isinstance(value, dict) else "list"
            container = "ModuleDict" if kind == "dict" else "ModuleList"
            raise TypeError(f"{type(self).__name__}.{name}: a plain {kind} of modules is not registered "
                            f"(its parameters would be missed); use tg.nn.{container}(...) instead")
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

    def fuses(self, activation: Module) -> bool:
        """True when forward(x, activation) runs `activation` inside this layer's node (a Sequential
        then hands it the activation that follows it); False for most layers."""
        return False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "_pre_hooks" in self.__dict__ or "_hooks" in self.__dict__:
            return self._call_with_hooks(args, kwargs)
        if K.quiet.depth:
            return self.forward(*args, **kwargs) if kwargs else self.forward(*args)
        with K.silenced_numpy():  # one errstate for the whole forward, not one per CPU kernel
            return self.forward(*args, **kwargs) if kwargs else self.forward(*args)

    def _call_with_hooks(self, args: tuple, kwargs: dict) -> Any:
        # as in PyTorch, hooks see the positional arguments; keyword arguments go to forward as given
        for hook in list(self.__dict__.get("_pre_hooks", {}).values()):
            changed = hook(self, args)
            if changed is not None:
                args = changed if isinstance(changed, tuple) else (changed,)
        with K.silenced_numpy():
            output = self.forward(*args, **kwargs)
        for hook in list(self.__dict__.get("_hooks", {}).values()):
            changed = hook(self, args, output)
            if changed is not None:
                output = changed
        return output

    # ---- hooks -------------------------------------------------------------------------------
    def register_forward_pre_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """Call hook(module, args) before forward; a non-None result replaces the arguments."""
        hooks = self.__dict__.setdefault("_pre_hooks", {})
        key = next(_hook_ids)
        hooks[key] = hook
        return RemovableHandle(hooks, key)

    def register_forward_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """Call hook(module, args, output) after forward; a non-None result replaces the output."""
        hooks = self.__dict__.setdefault("_hooks", {})
        key = next(_hook_ids)
        hooks[key] = hook
        return RemovableHandle(hooks, key)

    # ---- the module tree ---------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """(name, submodule) pairs, in the order they were assigned."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self) -> Iterator[Module]:
        """The direct submodules, in the order they were assigned."""
        for _, child in self.named_children():
            yield child

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted name, module) for this module ("" ) and every submodule below it, each once."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{n}" if name else n, c) for n, c in module.named_children()]
            stack.extend(reversed(children))

    def modules(self) -> Iterator[Module]:
        """This module and every submodule below it, each once."""
        for _, module in self.named_modules():
            yield module

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call fn on every submodule (children first) and then on this module; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def train(self, mode: bool = True) -> Module:
        """Set training mode (Dropout drops, BatchNorm uses batch statistics) here and below; returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode): mode must be a bool, got {type(mode).__name__}")
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        """Set evaluation mode (train(False)); returns self."""
        return self.train(False)

    # ---- parameters and buffers --------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(dotted name, parameter) pairs, frozen ones included: own first, then each child's."""
        registered = vars(self).get("_parameter_names", ())
        for name, value in vars(self).items():
            # NOTE: requires_grad also counts, for tensors switched on after assignment
            if isinstance(value, Tensor) and (name in registered or value.requires_grad):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_parameters(prefix + name + ".")

    def parameters(self) -> list[Tensor]:
        """Every parameter, in a stable order (each once)."""
        seen, result = set(), []
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                result.append(p)
        return result

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Keep a tensor that is state but not a parameter (e.g. running statistics): moved by to(),
        saved in state_dict() when persistent."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"register_buffer: the name must be an identifier, got {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: {name} must be a Tensor or None, got {type(tensor).__name__}")
        if tensor is not None and tensor.requires_grad:
            raise ValueError(f"register_buffer: {name} requires grad; a buffer holds state, not a parameter")
        self.__dict__.setdefault("_buffer_names", {})[name] = bool(persistent)
        setattr(self, name, tensor)

    def named_buffers(self, prefix: str = "", persistent_only: bool = False) -> Iterator[tuple[str, Tensor]]:
        """(dotted name, buffer) pairs: this module's own first, then each child's."""
        for name, persistent in self.__dict__.get("_buffer_names", {}).items():
            value = getattr(self, name, None)
            if value is not None and (persistent or not persistent_only):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_buffers(prefix + name + ".", persistent_only)

    def buffers(self) -> list[Tensor]:
        """Every buffer, in a stable order."""
        return [b for _, b in self.named_buffers()]

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Turn gradient recording on or off for every parameter; returns self."""
        if not isinstance(requires_grad, bool):
            raise TypeError(f"requires_grad_: expected a bool, got {type(requires_grad).__name__}")
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self) -> None:
        """Forget every parameter's gradient."""
        for p in self.parameters():
            p.grad = None

    def _state_tensors(self) -> dict[str, Tensor]:
        return {**dict(self.named_parameters()), **dict(self.named_buffers(persistent_only=True))}

    def state_dict(self) -> dict[str, Tensor]:
        """Parameter and persistent buffer name -> detached tensor (sharing memory with it), frozen
        parameters included."""
        return {name: t.detach() for name, t in self._state_tensors().items()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy values (Tensors, NumPy/CuPy arrays, PyTorch tensors, numbers) into parameters and
        buffers; checks every name, shape and dtype first. strict=False skips missing and unexpected
        names and returns them.

        Real values are converted to the tensor's dtype (float64 is rounded to float32); an integer
        buffer (BatchNorm's num_batches_tracked) takes only integers that fit, never a float; other
        kinds (complex, strings) are refused. On any error nothing has changed.
        """
        if not isinstance(state, Mapping):
            raise TypeError("load_state_dict: expected a dict of name -> Tensor/array, "
                            f"got {type(state).__name__}")
        own = self._state_tensors()
        buffers = dict(self.named_buffers(persistent_only=True))
        missing = [name for name in own if name not in state]
        unexpected = [name for name in state if name not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        converted = {}
        for name, value in state.items():
            if name not in own:
                continue
            target = own[name]
            value = _loadable(name, value, target.dtype)
            array = Tensor(value, device=target.device, dtype=target.dtype).array
            if array.shape != target.shape:
                raise ValueError(f"load_state_dict: {name} has shape {array.shape} in the state "
                                 f"but {target.shape} in the model")
            kind = "buffer" if name in buffers else "parameter"
            target._check_writable(f"load_state_dict: {kind} {name}")
            converted[name] = array
        for name, array in converted.items():  # nothing changes until everything was checked
            own[name].array[...] = array
            own[name]._bump_version()  # graphs that saved the old values refuse backward()
        return LoadResult(missing, unexpected)

    def to(self, device: str) -> Module:
        """Move every parameter and buffer to `device` in place; returns self."""
        device = backend.check_device(device)
        for p in self.parameters() + self.buffers():
            moved = backend.move(p.array, device)
            if moved is not p.array:  # a graph that saved the old array must not backpropagate
                p.array = moved
                p._bump_version()
            if p.grad is not None:
                p.grad.array = backend.move(p.grad.array, device)
        return self

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({name}): " + repr(child).replace("\n", "\n  ")
                        for name, child in self.named_children())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self) -> str:
        """Settings shown in repr()."""
        return ""


class ModuleList(Module):
    """A list of submodules that registers them (their parameters, buffers and modes follow)."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        object.__setattr__(self, "_items", [])
        self.extend(modules)

    @staticmethod
    def _checked(module: Any) -> Module:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds modules, got {type(module).__name__}")
        return module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, module in enumerate(self._items):
            yield str(i), module

    def append(self, module: Module) -> ModuleList:
        """Add a module at the end; returns self."""
        self._items.append(self._checked(module))
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Add modules at the end; returns self."""
        self._items.extend(self._checked(m) for m in modules)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert a module before `index`."""
        self._items.insert(index, self._checked(module))

    def __getitem__(self, index: int | slice) -> Any:
        return type(self)(self._items[index]) if isinstance(index, slice) else self._items[index]

    def __setitem__(self, index: int, module: Module) -> None:
        self._items[index] = self._checked(module)

    def __delitem__(self, index: int | slice) -> None:
        del self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)


class ModuleDict(Module):
    """A dict of submodules (insertion ordered) that registers them."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] = ()) -> None:
        object.__setattr__(self, "_items", {})
        self.update(modules)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._items.items()

    def update(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]]) -> None:
        """Add or replace modules by name."""
        for name, module in (modules.items() if isinstance(modules, Mapping) else modules):
            self[name] = module

    def __setitem__(self, name: str, module: Module) -> None:
        if not isinstance(name, str) or not isinstance(module, Module):
            raise TypeError(f"ModuleDict maps str names to modules, got {name!r}: {type(module).__name__}")
        self._items[name] = module

    def __getitem__(self, name: str) -> Module:
        return self._items[name]

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def keys(self) -> Any:
        """The names."""
        return self._items.keys()

    def values(self) -> Any:
        """The modules."""
        return self._items.values()

    def items(self) -> Any:
        """(name, module) pairs."""
        return self._items.items()


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
        shape = x.array.shape
        ndim = len(shape)
        if ndim == 0 or shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): expected input whose "
                             f"last dimension is {self.in_features}, got shape {shape}")
        if ndim == 1:  # one sample: through the 2-D product (whose backward needs 2-D), and back
            return self.forward(x.reshape(1, self.in_features), activation).reshape(self.out_features)
        if ndim > 2:  # leading dimensions are a batch: through the 2-D product, and back
            flat = self.forward(x.reshape(-1, self.in_features), activation)
            return flat.reshape(*shape[:-1], self.out_features)
        bias = self.bias
        if activation is None and bias is None:
            return _product(x, self.weight)
        layer = _affine if activation is None else activation.after_linear(bias is not None)
        return layer(x, self.weight, bias) if bias is not None else layer(x, self.weight)

    def fuses(self, activation: Module) -> bool:
        """True for any activation without hooks: product, bias and activation become one fused node."""
        return isinstance(activation, Activation) and activation.fusable()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Sequential(ModuleList):
    """Layers applied one after the other (a Linear followed by an activation, or a Conv2d followed
    by a ReLU, runs as one node)."""

    def __init__(self, *layers: Module) -> None:
        super().__init__(layers)

    @property
    def layers(self) -> list[Module]:
        """The layers, in order."""
        return self._items

    def forward(self, x: Tensor) -> Tensor:
        layers, i = self._items, 0
        count = len(layers)
        while i < count:
            layer = layers[i]
            if i + 1 < count:
                following = layers[i + 1]
                if layer.fuses(following) and not _has_hooks(layer):
                    # product, bias and activation in one fused node; a layer without hooks called
                    # inside this (silenced) call is its forward (Module.__call__ adds nothing then)
                    if K.quiet.depth and type(layer).__call__ is Module.__call__:
                        x = layer.forward(x, following)
                    else:
                        x = layer(x, following)
                    i += 2
                    continue
            x = layer(x)
            i += 1
        return x


def _product(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T, with weight in its (out, in) layout (no transpose node)."""
    return ops.MatMul.apply(x, weight, transpose_b=True)


_affine = fuse(lambda x, weight, bias: _product(x, weight) + bias)


class Activation(Module):
    """An elementwise activation. After a Linear in a Sequential, the layer's product, bias add
    and activation run as one fused node (tg.fuse of `function(x @ weight.T + bias)`): the same
    composition, one launch each way for small layers on the GPU.

    Subclasses give `function(x, *settings)` and, when they have settings (a slope, a beta),
    `settings()` returning them: one fused node is kept per class, settings and bias.
    """

    @staticmethod
    def function(x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> tuple:
        """The values besides x that `function` takes (none by default)."""
        return ()

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x, *self.settings())

    def fusable(self) -> bool:
        """True unless hooks must see this activation run on its own."""
        return not _has_hooks(self)

    def after_linear(self, bias: bool) -> fuse:
        """The fused (x, weight[, bias]) -> function(x @ weight.T [+ bias]) of this activation."""
        function, settings = type(self).function, self.settings()
        key = (type(self), settings, bias)
        fused = _FUSED_ACTIVATIONS.pop(key, None)  # re-inserted below: most recently used last
        if fused is None:
            fused = (fuse(lambda x, weight, bias: function(_product(x, weight) + bias, *settings)) if bias
                     else fuse(lambda x, weight: function(_product(x, weight), *settings)))
            if len(_FUSED_ACTIVATIONS) >= _FUSED_ACTIVATIONS_LIMIT:
                del _FUSED_ACTIVATIONS[next(iter(_FUSED_ACTIVATIONS))]  # the least recently used
        _FUSED_ACTIVATIONS[key] = fused
        return fused


# the fused Linear+activation nodes, one per (activation class, settings, bias); bounded because
# settings are user values (a sweep over slopes must not grow it without end)
_FUSED_ACTIVATIONS: dict[tuple, fuse] = {}
_FUSED_ACTIVATIONS_LIMIT = 256


def _has_hooks(module: Module) -> bool:
    state = module.__dict__  # (hooks live here only once one was registered: two cheap tests first)
    if "_pre_hooks" not in state and "_hooks" not in state:
        return False
    return bool(state.get("_pre_hooks") or state.get("_hooks"))


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

    def __init__(self, reduction: str = "mean", **settings: Any) -> None:
        for name in ("weight", "pos_weight"):  # PyTorch's order: weights first, the reduction by name
            if isinstance(settings.get(name), str):
                given = settings[name]
                raise TypeError(f"{type(self).__name__}: {name} must be a Tensor, got the string "
                                f"{given!r}; pass the reduction by name: reduction={given!r}")
        self.reduction, self.settings = reduction, settings  # settings: the function's other keywords

    def forward(self, input: Tensor, target: Any) -> Tensor:
        return self.function(input, target, reduction=self.reduction, **self.settings)


class MSELoss(_Loss):
    """Mean squared error: mean((input - target) ** 2)."""

    function = staticmethod(functional.mse_loss)


# ---- classification losses and layers -----------------------------------------------------------
class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy between logits (N, C) and integer class labels (N,) or probabilities."""

    function = staticmethod(functional.cross_entropy)

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        super().__init__(reduction, weight=weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing)


class NLLLoss(_Loss):
    """Negative log-likelihood of integer class labels, given log-probabilities."""

    function = staticmethod(functional.nll_loss)

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__(reduction, weight=weight, ignore_index=ignore_index)


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities (e.g. the output of Sigmoid)."""

    function = staticmethod(functional.binary_cross_entropy)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits: Sigmoid and BCELoss in one numerically stable step;
    pos_weight (one per class) weighs the positive term, weight each element."""

    function = staticmethod(functional.binary_cross_entropy_with_logits)

    def __init__(self, weight: Tensor | None = None, reduction: str = "mean",
                 pos_weight: Tensor | None = None) -> None:
        super().__init__(reduction, weight=weight, pos_weight=pos_weight)


class Softmax(Module):
    """softmax along dim (or axis; the last by default)."""

    def __init__(self, dim: int | None = None, *, axis: int | None = None) -> None:
        self.axis = _pick("Softmax", dim, axis)
        self.axis = -1 if self.axis is None else self.axis

    def forward(self, x: Tensor) -> Tensor:
        return x.softmax(self.axis)


class LogSoftmax(Module):
    """log_softmax along dim (or axis; the last by default)."""

    def __init__(self, dim: int | None = None, *, axis: int | None = None) -> None:
        self.axis = _pick("LogSoftmax", dim, axis)
        self.axis = -1 if self.axis is None else self.axis

    def forward(self, x: Tensor) -> Tensor:
        return x.log_softmax(self.axis)


class Flatten(Module):
    """Merge dimensions start_dim..end_dim (default: all but the batch dimension)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)
