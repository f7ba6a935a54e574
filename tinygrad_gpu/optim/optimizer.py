"""The Optimizer base: parameter groups, validation before any write, and state saving and restoring.

Each subclass updates a group's parameters with kernel-table rows launched once per device and
dtype (`Elementwise.foreach`: one multi-tensor launch on the GPU). The settings the kernels read
(learning rate, momentum, betas, ...) live in device memory, one 0-d array per group, device and
dtype: changing a setting (a scheduler writing group["lr"]) is an in-place device write, so steps
captured by tg.jit follow it without recapture and nothing is read back to the host.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

import numpy as np

from .. import kernels as K
from ..backend import array_module
from ..jit import CaptureError, capture_state
from ..nn.init import finite_setting
from ..nn.parameter import Parameter
from ..tensor import Tensor

# keys schedulers keep in a parameter group beside the optimizer's own settings (PyTorch's names)
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
_NONE_FRESH: frozenset[int] = frozenset()  # a step that creates no state (shared, never changed)


_array, _grad_array = attrgetter("array"), attrgetter("_grad.array")  # (C-level, per parameter)


def checked_lr(value: Any) -> float:
    """A learning rate as a float: finite and >= 0 (0 is allowed, e.g. the end of a cosine schedule)."""
    lr = finite_setting("learning rate", value)
    if lr < 0:
        raise ValueError(f"learning rate must be >= 0, got {value!r}")
    return lr


def checked_flag(name: str, value: Any) -> bool:
    """A True/False setting, or a TypeError naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def _as_dtype(value: float, dtype: Any) -> Any:
    """`value` in `dtype`; beyond the dtype's range it becomes ±inf without a warning."""
    with np.errstate(over="ignore"):
        return np.asarray(value, np.float64).astype(dtype)


class ParamGroup(dict):
    """One entry of Optimizer.param_groups: "params" and the group's settings, as in PyTorch.

    Setting a value checks it (the whole group stays valid) and rewrites the copies of the
    kernel scalars kept in device memory: an in-place write, so captured steps follow it.
    """

    def __init__(self, optimizer: Optimizer, values: dict[str, Any]) -> None:
        super().__init__(values)
        self._optimizer = optimizer
        self._written: dict[str, float] = optimizer._kernel_scalars(self)
        self._on_device: dict[tuple, dict[str, Any]] = {}  # (array type, dtype) -> {name: 0-d array}

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "params":
            raise ValueError("a parameter group's params cannot be replaced; use add_param_group")
        self._apply({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Set several settings at once (all checked first)."""
        self._apply(dict(*args, **kwargs))

    def setdefault(self, key: str, default: Any = None) -> Any:
        """The value of `key`, set to `default` first if missing."""
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def _apply(self, changes: dict[str, Any]) -> None:
        if "params" in changes:
            raise ValueError("a parameter group's params cannot be replaced; use add_param_group")
        settings = {k: v for k, v in self.items() if k != "params"}
        checked = self._optimizer._checked_group({**settings, **changes})
        if (
            capture_state.active
            and self._on_device
            and self._optimizer._kernel_scalars(checked) != self._written
        ):
            # the write would be recorded, and every replay would put this value back
            raise CaptureError(
                f"{type(self._optimizer).__name__}: a setting changed inside a captured step; "
                "change settings (or step a scheduler) outside the captured function"
            )
        dict.update(self, checked)
        self._refresh()

    def __delitem__(self, key: str) -> None:
        if key == "params" or key in self._optimizer.defaults:
            raise KeyError(f"{key!r} is a setting every parameter group needs; it cannot be removed")
        dict.__delitem__(self, key)

    def device_scalars(self, array: Any) -> dict[str, Any]:
        """The kernel scalars as 0-d arrays of `array`'s device and dtype (made once, then rewritten)."""
        key = (type(array), array.dtype)
        scalars = self._on_device.get(key)
        if scalars is None:
            if capture_state.active:  # made during capture, a replay would write the old values back
                raise CaptureError(
                    f"{type(self._optimizer).__name__} keeps its settings in device memory, "
                    "made on a parameter group's first update; that step runs eagerly"
                )
            xp = np if type(array) is np.ndarray else array_module("cuda")
            scalars = self._on_device[key] = {
                name: xp.asarray(_as_dtype(value, array.dtype)) for name, value in self._written.items()
            }
        return scalars

    def _refresh(self) -> None:
        values = self._optimizer._kernel_scalars(self)
        for name, value in values.items():
            old = self._written.get(name)
            if old is None or not (old == value or (math.isnan(old) and math.isnan(value))):
                for scalars in self._on_device.values():
                    scalars[name].fill(_as_dtype(value, scalars[name].dtype).item())
        self._written = values


class Optimizer:
    """Holds parameter groups and each parameter's state; subclasses define how a group is updated."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        name = type(self).__name__
        self.defaults = self._checked_group(dict(defaults))
        self.param_groups: list[ParamGroup] = []
        self.params: list[Tensor] = []  # every parameter, group after group
        self._states: list[dict[str, Any]] = []  # one per parameter, {} before its first update
        self._fresh: set[int] | frozenset[int] = _NONE_FRESH
        if isinstance(params, (Tensor, dict)):
            raise TypeError(
                f"{name} takes an iterable of Tensors or of dicts, got a single {type(params).__name__} "
                "(wrap it in a list)"
            )
        given = list(params)
        if not given:
            raise ValueError(f"{name} got an empty parameter list")
        dicts = sum(isinstance(g, dict) for g in given)
        if 0 < dicts < len(given):
            raise TypeError(f"{name} takes an iterable of Tensors or one of parameter-group dicts, not both")
        groups = given if dicts else [{"params": given}]
        for group in groups:
            self.add_param_group(group)

    # ---- parameter groups ----------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: a dict with "params" (a Tensor or an iterable of them) and optional settings."""
        name = f"{type(self).__name__}.add_param_group"
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(
                f"{name}: a parameter group is a dict with a 'params' entry, got {type(param_group).__name__}"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        unique: list[Tensor] = []
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__} takes Tensors, got {type(p).__name__}")
            # a frozen tg.nn.Parameter is accepted (as PyTorch does): it has no grad, so no step moves it
            if not (p.requires_grad or isinstance(p, Parameter)) or not p.is_leaf:
                raise ValueError(
                    f"{type(self).__name__}: every parameter must be a leaf tensor with "
                    f"requires_grad=True (got shape {p.shape})"
                )
            if any(p is q for q in self.params):
                raise ValueError(f"{name}: a parameter of shape {p.shape} is already in another group")
            if all(p is not q for q in unique):
                unique.append(p)
        if not unique:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        settings = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        group = ParamGroup(self, {"params": unique, **self._checked_group(settings)})
        self.param_groups.append(group)
        self.params.extend(unique)
        self._states.extend({} for _ in unique)

    def _checked_group(self, values: dict[str, Any]) -> dict[str, Any]:
        """A group's settings converted and validated (keys other than the optimizer's pass as they are)."""
        checked = dict(values)
        checked["lr"] = checked_lr(values["lr"])
        for key in SCHEDULER_KEYS:
            if key in values and not isinstance(values[key], (tuple, list)):
                checked[key] = finite_setting(key, values[key])
        return checked

    def _kernel_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        """The numbers a group's update kernels read, by parameter name (kept in device memory)."""
        return {"lr": group["lr"]}

    def __getattr__(self, name: str) -> Any:
        # opt.lr, opt.momentum, opt.betas, ...: a setting shared by every group (PyTorch keeps them per group)
        groups = self.__dict__.get("param_groups")
        if groups and name in self.__dict__.get("defaults", ()):
            values = [group[name] for group in groups]
            if all(v == values[0] for v in values):
                return values[0]
            raise AttributeError(
                f"{type(self).__name__}'s parameter groups have different {name} values; "
                f"read param_groups[i][{name!r}]"
            )
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # setting opt.lr (or another setting) sets it in every group, all checked first
        if name in self.__dict__.get("defaults", ()):
            checked = [group._optimizer._checked_group({**group, name: value}) for group in self.param_groups]
            for group, settings in zip(self.param_groups, checked):
                group[name] = settings[name]
            return
        super().__setattr__(name, value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient (None), or fill it with zeros in place."""
        if set_to_none:  # the common case: no checks to run (None is always a valid .grad)
            for p in self.params:
                p._grad = None
            return
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            elif getattr(p.grad.array.flags, "writeable", True):
                # a gradient recorded with create_graph=True leaves its graph (PyTorch's detach_),
                # else the next backward would add onto it and chain every step's graph
                p.grad._ctx, p.grad.requires_grad = None, False
                p.grad.array.fill(0)
            else:
                p.grad = Tensor._from_array(array_module(p.device).zeros_like(p.array))

    # ---- a step: everything checked, then every group updated ------------------------------------
    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        work = []  # (group, its parameters to update split by device and dtype)
        fresh = []  # (group, index) of parameters whose state this step creates
        states = self._states
        offset = 0
        for group in self.param_groups:
            params = group["params"]
            keys = self._state_keys(group)
            parts: dict[tuple, list[int]] = {}  # one part per device and dtype: one launch each
            # one pass per group: the common case is tested inline; anything else goes through
            # _check_step, which raises naming the parameter (before anything is written)
            for k, p in enumerate(params):
                grad = p._grad
                if grad is None:
                    continue
                i = offset + k
                array = p.array
                dtype = array.dtype
                grad_array = grad.array if isinstance(grad, Tensor) else None
                if not (grad_array is not None and grad_array.shape == array.shape
                        and grad_array.dtype == dtype and type(grad_array) is type(array)
                        and dtype.kind == "f" and getattr(array.flags, "writeable", True)):
                    self._check_step([i])
                part = parts.get((type(array), dtype))
                if part is None:
                    parts[(type(array), dtype)] = [i]
                else:
                    part.append(i)
                state = states[i]
                for key in keys:
                    if key not in state:
                        fresh.append((group, i))
                        break
            offset += len(params)
            work.append((group, list(parts.values())))
        if fresh and capture_state.active:
            # a replayed graph would zero the new state again every step
            raise CaptureError(
                f"{type(self).__name__} creates a parameter's state on its first update; "
                "that step runs eagerly"
            )
        params = self.params
        for group, parts in work:  # device copies of the settings exist before anything is written
            for part in parts:
                group.device_scalars(params[part[0]].array)
        for group, i in fresh:
            self._init_state(group, i)
        # graphs that saved the parameters' values refuse backward
        Tensor._bump_versions([params[i] for _, parts in work for part in parts for i in part])
        if fresh or self._fresh:  # (an attribute write goes through __setattr__: only when it changes)
            self._fresh = {i for _, i in fresh} if fresh else _NONE_FRESH
        for group, parts in work:
            for part in parts:
                self._update(group, part)

    def _check_step(self, indices: list[int]) -> None:
        """Raise, naming the parameter, if any of them cannot be updated (before anything is written)."""
        for i in indices:
            p = self.params[i]
            grad, array = p.grad, p.array
            if (isinstance(grad, Tensor) and grad.array.shape == array.shape
                    and grad.array.dtype == array.dtype and type(grad.array) is type(array)
                    and array.dtype.kind == "f" and getattr(array.flags, "writeable", True)):
                continue  # the common case, checked without building any message
            where = f"{type(self).__name__}.step: parameter {i} (shape {p.shape}, {p.dtype}, {p.device})"
            if not isinstance(grad, Tensor):
                raise TypeError(
                    f"{where} has a .grad of type {type(grad).__name__}, not a Tensor; nothing was updated"
                )
            if grad.shape != p.shape or grad.dtype != p.dtype or grad.device != p.device:
                raise ValueError(
                    f"{where} has a gradient of shape {grad.shape}, {grad.dtype}, "
                    f"{grad.device}; it must match the parameter; nothing was updated"
                )
            if np.dtype(p.dtype).kind != "f":
                raise TypeError(
                    f"{where}: only floating-point parameters can be updated; nothing was updated"
                )
            if not getattr(p.array.flags, "writeable", True):
                raise ValueError(
                    f"{where} is read-only (e.g. made from np.broadcast_to), so it cannot be "
                    "updated in place; nothing was updated"
                )

    def _update(self, group: ParamGroup, indices: list[int]) -> None:  # pragma: no cover - abstract
        """Update parameters `indices` of `group` (one device and dtype) in place."""
        raise NotImplementedError

    def _foreach_arrays(self, indices: list[int], *keys: str, **renamed: str) -> dict[str, list]:
        """A foreach row's arrays for parameters `indices`: their gradients ("grad"), their values
        ("param"), and the state buffers named in `keys` (the row's names too) or, in `renamed`,
        row name=state key."""
        params = list(map(self.params.__getitem__, indices))
        arrays = {"grad": list(map(_grad_array, params)), "param": list(map(_array, params))}
        for name, key in (*zip(keys, keys), *renamed.items()):
            arrays[name] = [self._states[i][key] for i in indices]
        return arrays

    # ---- per-parameter state ---------------------------------------------------------------------
    @staticmethod
    def _count_step(states: list[dict[str, Any]]) -> list[Any]:
        """Add 1 to each parameter's step count on its device (one launch); the counts, for the kernel."""
        counts = Optimizer._step_counts(states)
        K.ADD_IN_PLACE.foreach({"total": counts}, {"value": 1})
        return counts

    @staticmethod
    def _step_counts(states: list[dict[str, Any]]) -> list[Any]:
        """Each parameter's step count, for a row that adds 1 itself (foreach(..., counted="step"))."""
        return [state["step"] for state in states]

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The entries of one parameter's state under `group`'s settings, once it has any."""
        return ()

    def _init_state(self, group: dict[str, Any], index: int) -> None:
        """Create the missing entries of parameter `index`'s state (zeros, a count of 0)."""
        p = self.params[index]
        xp = array_module(p.device)
        state = self._states[index]
        for key in self._state_keys(group):
            if key not in state:
                state[key] = xp.zeros((), p.dtype) if key == "step" else xp.zeros_like(p.array)

    @property
    def state(self) -> dict[Tensor, dict[str, Any]]:
        """Each parameter's state by parameter, as PyTorch's optimizer.state (the entries are live)."""
        return {p: state for p, state in zip(self.params, self._states)}

    def _state_list(self, key: str) -> list[Any]:
        return [state.get(key) for state in self._states]

    @staticmethod
    def _kept(current: Any, loaded: Any) -> Any:
        """`loaded` copied into the `current` buffer if there is one: a step captured by tg.jit
        keeps reading and writing the buffers it was recorded with."""
        if current is None:
            return loaded
        current[...] = loaded
        return current

    # ---- state_dict / load_state_dict ------------------------------------------------------------
    # settings added after checkpoints were first written: an older checkpoint gets the default
    LATER_SETTINGS: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        """A snapshot, laid out as PyTorch's: {"state": {index: {name: array or int}}, "param_groups": [...]}.

        Arrays are copies on the parameters' devices, so later steps do not change the snapshot.
        """
        state = {}
        for index, entry in enumerate(self._states):
            if entry:
                state[index] = {k: int(v) if k == "step" else v.copy() for k, v in entry.items()}
        groups, offset = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            settings = {k: v for k, v in group.items() if k != "params"}
            groups.append({**settings, "params": list(range(offset, offset + count))})
            offset += count
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what state_dict() saved; everything is checked before anything changes."""
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}: expected a dict with keys 'param_groups' and 'state', got {got}")
        groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
            raise ValueError(f"{name}: expected 'param_groups' to be a list of dicts")
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"{name}: the state has {len(groups)} parameter groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        if not isinstance(saved_state, dict):
            raise ValueError(
                f"{name}: expected 'state' to be a dict from parameter index to its state, "
                f"got {type(saved_state).__name__}"
            )
        position: dict[int, int] = {}  # saved index -> index in self.params
        settings_list, offset = [], 0
        for g, (saved, current) in enumerate(zip(groups, self.param_groups)):
            indices = saved.get("params", [])
            count = len(current["params"])
            if not isinstance(indices, (list, tuple)) or len(indices) != count:
                got = len(indices) if isinstance(indices, (list, tuple)) else repr(indices)
                raise ValueError(
                    f"{name}: the state is for {got} parameters, this optimizer has {count}"
                    + (f" (parameter group {g})" if len(groups) > 1 else "")
                )
            for k, index in enumerate(indices):
                if (
                    isinstance(index, bool)
                    or not isinstance(index, (int, np.integer))
                    or int(index) in position
                ):
                    raise ValueError(f"{name}: parameter indices must be distinct ints, got {index!r}")
                position[int(index)] = offset + k
            offset += count
            settings = {k: v for k, v in saved.items() if k != "params"}
            for key, default in self.LATER_SETTINGS.items():
                settings.setdefault(key, default)
            expected = set(self.defaults)
            allowed = expected | set(SCHEDULER_KEYS) | set(current)
            missing, unexpected = expected - set(settings), set(settings) - allowed
            if missing or unexpected:
                raise ValueError(
                    f"{name}: settings missing {sorted(missing)}, unexpected {sorted(unexpected)}"
                )
            settings_list.append(self._checked_group(settings))
        group_of = [g for g, group in enumerate(self.param_groups) for _ in group["params"]]
        restored: dict[int, dict[str, Any]] = {}
        for index, entry in saved_state.items():
            if (
                isinstance(index, bool)
                or not isinstance(index, (int, np.integer))
                or int(index) not in position
            ):
                raise ValueError(
                    f"{name}: parameter index {index!r} is out of range for {len(self.params)} parameters"
                )
            target = position[int(index)]
            keys = self._state_keys(settings_list[group_of[target]])
            restored[target] = self._checked_parameter_state(name, target, entry, keys)
        for group, settings in zip(self.param_groups, settings_list):
            dict.update(group, settings)
            group._refresh()
        for index, state in enumerate(self._states):
            loaded = restored.get(index)
            if loaded is None:
                state.clear()
                continue
            p = self.params[index]
            for key in list(state):
                if key not in loaded:
                    del state[key]
            for key, value in loaded.items():
                if key == "step":
                    value = array_module(p.device).full((), value, p.dtype)
                state[key] = self._kept(state.get(key), value)

    def _checked_parameter_state(
        self, name: str, index: int, entry: Any, keys: tuple[str, ...]
    ) -> dict[str, Any]:
        """One parameter's saved state as private arrays on its device, or an error saying what is wrong."""
        if not isinstance(entry, dict) or set(entry) != set(keys):
            got = sorted(entry) if isinstance(entry, dict) else repr(entry)
            raise ValueError(
                f"{name}: the state of parameter {index} must have the keys {list(keys)}, got {got}"
            )
        param = self.params[index]
        converted = {}
        for key, value in entry.items():
            if key == "step":
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                    raise ValueError(f"{name}: step of parameter {index} must be an int >= 1, got {value!r}")
                converted[key] = int(value)
                continue
            try:
                array = Tensor(value, device=param.device, dtype=param.dtype).array
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{name}: {key} of parameter {index} is not an array of numbers: {error}"
                ) from None
            if array.shape != param.shape:
                raise ValueError(
                    f"{name}: {key} of parameter {index} has shape {array.shape}, the "
                    f"parameter has shape {param.shape}"
                )
            converted[key] = array.copy()  # a private buffer: steps update it in place
        return converted
