"""Optimizers: each step updates every parameter in place on its device, without host round trips.

On the GPU, SGD updates all parameters in one multi-tensor launch; Adam/AdamW count the step in
one launch and update all parameters in a second. Learning rates and step counts live in device
memory, so steps captured by tg.jit replay correctly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import kernels as K
from ..backend import array_module
from ..jit import CaptureError, capture_state
from ..nn.init import finite_setting
from ..tensor import Tensor


class Optimizer:
    """Holds the parameters to update; subclasses define step()."""

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self.params: list[Tensor] = []
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__} takes Tensors, got {type(p).__name__}")
            if not p.requires_grad or not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: every parameter must be a leaf tensor with "
                                 f"requires_grad=True (got shape {p.shape})")
            if all(p is not q for q in self.params):
                self.params.append(p)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        self._lr_on_device: dict = {}  # dtype -> 0-d device array, so captured steps see changes
        self.lr = lr

    @property
    def lr(self) -> float:
        """The learning rate; setting it also updates the copy kept in device memory."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        value = finite_setting("learning rate", value)
        if not value > 0:
            raise ValueError(f"learning rate must be positive, got {value}")
        self._lr = value
        for array in self._lr_on_device.values():
            array.fill(self._lr)

    def _lr_for(self, p: Tensor) -> Any:
        """The learning rate as a kernel argument: a Python float on the CPU, a device scalar on the GPU."""
        if p.device == "cpu":
            return self._lr
        array = self._lr_on_device.get(p.dtype)
        if array is None:
            array = self._lr_on_device[p.dtype] = array_module("cuda").full((), self._lr, p.dtype)
        return array

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (set it to None)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _groups(self, indices: list[int]) -> list[list[int]]:
        """`indices` split by device and dtype: each group is one multi-tensor launch."""
        groups: dict[tuple, list[int]] = {}
        for i in indices:
            array = self.params[i].array
            groups.setdefault((type(array), array.dtype), []).append(i)
        return list(groups.values())

    def _mark_updated(self) -> None:
        """Bump the version of every parameter about to change: graphs that saved it refuse backward."""
        for p in self.params:
            if p.grad is not None:
                p._bump_version()

    # ---- state: settings and per-parameter buffers, saved and restored -----------------------
    STATE_KEYS: tuple[str, ...] = ()  # the entries of one parameter's state, once it has any

    def hyperparameters(self) -> dict[str, Any]:
        """The settings saved in state_dict()["param_groups"][0] (besides "params")."""
        return {"lr": self.lr}

    def _checked_hyperparameters(self, values: dict[str, Any]) -> dict[str, Any]:
        """`values` converted and validated, as attributes to set; raises ValueError for bad ones."""
        lr = finite_setting("learning rate", values["lr"])
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {values['lr']!r}")
        return {"lr": lr}

    def _parameter_state(self, index: int) -> dict[str, Any]:
        """State of parameter `index` ({} before its first update)."""
        return {}

    def _set_parameter_state(self, index: int, state: dict[str, Any] | None) -> None:
        """Replace the state of parameter `index` (None: forget it)."""

    @staticmethod
    def _kept(current: Any, loaded: Any) -> Any:
        """`loaded` copied into the `current` buffer if there is one: a step captured by tg.jit
        keeps reading and writing the buffers it was recorded with."""
        if current is None:
            return loaded
        current[...] = loaded
        return current

    def state_dict(self) -> dict[str, Any]:
        """A snapshot, laid out as PyTorch's: {"state": {index: {name: array or int}}, "param_groups": [...]}.

        Arrays are copies on the parameters' devices, so later steps do not change the snapshot.
        """
        state = {}
        for index in range(len(self.params)):
            entry = self._parameter_state(index)
            if entry:
                state[index] = {k: v if isinstance(v, int) else v.copy() for k, v in entry.items()}
        group = {**self.hyperparameters(), "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what state_dict() saved; everything is checked before anything changes."""
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}: expected a dict with keys 'param_groups' and 'state', got {got}")
        if not isinstance(state_dict["state"], dict):
            raise ValueError(f"{name}: expected 'state' to be a dict of parameter index to state, "
                             f"got {type(state_dict['state']).__name__}")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 or not isinstance(groups[0], dict):
            raise ValueError(f"{name}: expected 'param_groups' to be a list of one dict")
        group = dict(groups[0])
        indices = list(group.pop("params", []))
        if indices != list(range(len(self.params))):
            raise ValueError(f"{name}: the state is for {len(indices)} parameters, this optimizer has "
                             f"{len(self.params)}")
        expected = set(self.hyperparameters())
        if set(group) != expected:
            raise ValueError(f"{name}: settings missing {sorted(expected - set(group))}, "
                           f"unexpected {sorted(set(group) - expected)}")
        settings = self._checked_hyperparameters(group)
        restored = {}
        for index, entry in state_dict["state"].items():
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) \
                    or not 0 <= index < len(self.params):
                raise ValueError(f"{name}: parameter index {index!r} is out of range for "
                               f"{len(self.params)} parameters")
            restored[int(index)] = self._checked_parameter_state(name, int(index), entry)
        for attribute, value in settings.items():
            setattr(self, attribute, value)
        for index in range(len(self.params)):
            self._set_parameter_state(index, restored.get(index))

    def _checked_parameter_state(self, name: str, index: int, entry: Any) -> dict[str, Any]:
        """One parameter's saved state as private arrays on its device, or an error saying what is wrong."""
        if not isinstance(entry, dict) or set(entry) != set(self.STATE_KEYS):
            got = sorted(entry) if isinstance(entry, dict) else repr(entry)
            raise ValueError(f"{name}: the state of parameter {index} must have the keys "
                           f"{list(self.STATE_KEYS)}, got {got}")
        param = self.params[index]
        converted = {}
        for key, value in entry.items():
            if key == "step":
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                    raise ValueError(f"{name}: step of parameter {index} must be an int >= 1, "
                                     f"got {value!r}")
                converted[key] = int(value)
                continue
            array = Tensor(value, device=param.device, dtype=param.dtype).array
            if array.shape != param.shape:
                raise ValueError(f"{name}: {key} of parameter {index} has shape {array.shape}, the "
                                 f"parameter has shape {param.shape}")
            converted[key] = array.copy()  # a private buffer: steps update it in place
        return converted


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay, as in PyTorch."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr)
        momentum = finite_setting("momentum", momentum)
        weight_decay = finite_setting("weight_decay", weight_decay)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {type(nesterov).__name__}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, bool(nesterov)
        self.buffers: list[Any] = [None] * len(self.params)

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        self._mark_updated()
        if self.params[0].device == "cpu" and not K.quiet.depth:
            with K.silenced_numpy():  # one errstate for all parameters
                self._update()
        else:
            self._update()

    def _update(self) -> None:
        updated = [i for i, p in enumerate(self.params) if p.grad is not None]
        if self.params[0].device == "cuda":
            for group in self._groups(updated):
                self._update_group(group)
            return
        # on the CPU one call per parameter: from Python the cheapest way to update small arrays
        weight_decay, momentum = self.weight_decay, self.momentum
        for i in updated:
            p = self.params[i]
            if momentum == 0:
                K.SGD_STEP(p.grad.array, self._lr_for(p), weight_decay, out=(p.array,))
                continue
            self._create_buffer(i)
            K.SGD_MOMENTUM_STEP(p.grad.array, self._lr_for(p), weight_decay, momentum,
                                int(self.nesterov), out=(p.array, self.buffers[i]))

    def _update_group(self, group: list[int]) -> None:
        """One multi-tensor launch for parameters of one device and dtype."""
        params = [self.params[i] for i in group]
        arrays = {"grad": [p.grad.array for p in params], "param": [p.array for p in params]}
        scalars = {"lr": self._lr_for(params[0]), "weight_decay": self.weight_decay}
        if self.momentum == 0:
            K.SGD_STEP.foreach(arrays, scalars)
            return
        for i in group:
            self._create_buffer(i)
        arrays["buf"] = [self.buffers[i] for i in group]
        K.SGD_MOMENTUM_STEP.foreach(arrays, {**scalars, "momentum": self.momentum,
                                             "nesterov": int(self.nesterov)})

    def _create_buffer(self, i: int) -> None:
        if self.buffers[i] is None:
            # a zero buffer makes the first step buf = grad, as PyTorch's first step does
            p = self.params[i]
            self.buffers[i] = array_module(p.device).zeros_like(p.array)

    STATE_KEYS = ("momentum_buffer",)

    def hyperparameters(self) -> dict[str, Any]:
        """lr, momentum, weight_decay and nesterov."""
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}

    def _checked_hyperparameters(self, values: dict[str, Any]) -> dict[str, Any]:
        checked = super()._checked_hyperparameters(values)
        momentum = finite_setting("momentum", values["momentum"])
        weight_decay = finite_setting("weight_decay", values["weight_decay"])
        if not isinstance(values["nesterov"], (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {type(values['nesterov']).__name__}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if values["nesterov"] and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        return {**checked, "momentum": momentum, "weight_decay": weight_decay,
                "nesterov": bool(values["nesterov"])}

    def _parameter_state(self, index: int) -> dict[str, Any]:
        buffer = self.buffers[index]
        return {} if buffer is None else {"momentum_buffer": buffer}

    def _set_parameter_state(self, index: int, state: dict[str, Any] | None) -> None:
        self.buffers[index] = None if state is None else self._kept(self.buffers[index],
                                                                    state["momentum_buffer"])


class Adam(Optimizer):
    """Adam with PyTorch's update rule: bias-corrected moments; weight_decay is added to the gradient.

    Each parameter's step count lives beside it, in device memory on the GPU, and the kernel
    derives the bias corrections from it: a step is two launches per dtype (count, then update
    every parameter, its moments in place), reads nothing back, and replays correctly when
    captured by tg.jit. Counts are kept in the parameters' dtype (float32 counts exactly to 2**24
    steps; by then both bias corrections are 1).
    """

    STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")
    _ROW = K.ADAM_STEP

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        settings = self._checked_hyperparameters({"lr": lr, "betas": betas, "eps": eps,
                                                  "weight_decay": weight_decay})
        self.betas, self.eps, self.weight_decay = settings["betas"], settings["eps"], settings["weight_decay"]
        self.step_counts: list[Any] = [None] * len(self.params)  # 0-d arrays once a parameter is updated
        self.exp_avgs: list[Any] = [None] * len(self.params)
        self.exp_avg_sqs: list[Any] = [None] * len(self.params)

    @property
    def steps(self) -> list[int]:
        """How many updates each parameter has had (reads the counts back from the device)."""
        return [0 if count is None else int(count) for count in self.step_counts]

    def hyperparameters(self) -> dict[str, Any]:
        """lr, betas, eps and weight_decay."""
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def _checked_hyperparameters(self, values: dict[str, Any]) -> dict[str, Any]:
        checked = super()._checked_hyperparameters(values)
        if not isinstance(values["betas"], (tuple, list)):
            raise TypeError(f"betas must be a pair of numbers, got {type(values['betas']).__name__}")
        betas = tuple(finite_setting("betas", b) for b in values["betas"])
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {values['betas']!r}")
        eps = finite_setting("eps", values["eps"])
        weight_decay = finite_setting("weight_decay", values["weight_decay"])
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        return {**checked, "betas": betas, "eps": eps, "weight_decay": weight_decay}

    def _parameter_state(self, index: int) -> dict[str, Any]:
        if self.step_counts[index] is None:
            return {}
        return {"step": int(self.step_counts[index]), "exp_avg": self.exp_avgs[index],
                "exp_avg_sq": self.exp_avg_sqs[index]}

    def _set_parameter_state(self, index: int, state: dict[str, Any] | None) -> None:
        if state is None:
            self.step_counts[index], self.exp_avgs[index], self.exp_avg_sqs[index] = None, None, None
        else:
            p = self.params[index]
            count = array_module(p.device).full((), state["step"], p.dtype)
            self.step_counts[index] = self._kept(self.step_counts[index], count)
            self.exp_avgs[index] = self._kept(self.exp_avgs[index], state["exp_avg"])
            self.exp_avg_sqs[index] = self._kept(self.exp_avg_sqs[index], state["exp_avg_sq"])

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        stepped = [i for i, p in enumerate(self.params) if p.grad is not None]
        fresh = [i for i in stepped if self.step_counts[i] is None]
        if fresh and capture_state.active:
            # a replayed graph would zero the new state again every step
            raise CaptureError(f"{type(self).__name__} creates a parameter's state on its first update; "
                               "that step runs eagerly")
        self._mark_updated()
        for i in fresh:
            p = self.params[i]
            xp = array_module(p.device)
            self.step_counts[i] = xp.zeros((), p.dtype)
            self.exp_avgs[i], self.exp_avg_sqs[i] = xp.zeros_like(p.array), xp.zeros_like(p.array)
        beta1, beta2 = self.betas
        for group in self._groups(stepped):
            counts = [self.step_counts[i] for i in group]
            K.ADD_IN_PLACE.foreach({"total": counts}, {"value": 1})
            arrays = {"grad": [self.params[i].grad.array for i in group],
                      "param": [self.params[i].array for i in group],
                      "exp_avg": [self.exp_avgs[i] for i in group],
                      "exp_avg_sq": [self.exp_avg_sqs[i] for i in group]}
            # log(0) is -inf, and -expm1(step * -inf) = 1: no bias correction for a zero beta
            scalars = {"lr": self._lr_for(self.params[group[0]]), "step": counts, "beta1": beta1,
                       "beta2": beta2, "log_beta1": math.log(beta1) if beta1 else -math.inf,
                       "log_beta2": math.log(beta2) if beta2 else -math.inf, "eps": self.eps,
                       "weight_decay": self.weight_decay}
            self._ROW.foreach(arrays, scalars)


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's AdamW): param *= 1 - lr * weight_decay, then Adam."""

    _ROW = K.ADAMW_STEP

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)
