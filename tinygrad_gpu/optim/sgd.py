"""SGD with optional momentum, dampening, Nesterov momentum and weight decay, as in PyTorch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import kernels as K
from ..nn.init import finite_setting
from ..tensor import Tensor
from .optimizer import Optimizer, ParamGroup, checked_flag


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay, as in PyTorch.

    Without momentum a group's parameters of one device and dtype are updated by one launch; with
    momentum the same launch updates the momentum buffers in place.
    """

    LATER_SETTINGS = {"dampening": 0.0}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
            },
        )

    def _checked_group(self, values: dict[str, Any]) -> dict[str, Any]:
        checked = super()._checked_group(values)
        momentum = finite_setting("momentum", values["momentum"])
        dampening = finite_setting("dampening", values["dampening"])
        weight_decay = finite_setting("weight_decay", values["weight_decay"])
        nesterov = checked_flag("nesterov", values["nesterov"])
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and zero dampening")
        return {
            **checked,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }

    def _kernel_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        return {
            "lr": group["lr"],
            "weight_decay": group["weight_decay"],
            "momentum": group["momentum"],
            "dampening": group["dampening"],
            "nesterov": float(group["nesterov"]),
        }

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    @property
    def buffers(self) -> list[Any]:
        """Each parameter's momentum buffer (None before its first update with momentum)."""
        return self._state_list("momentum_buffer")

    def _update(self, group: ParamGroup, indices: list[int]) -> None:
        arrays = self._foreach_arrays(indices)
        scalars = group.device_scalars(arrays["param"][0])
        if group["momentum"] == 0:
            K.SGD_STEP.foreach(arrays, {"lr": scalars["lr"], "weight_decay": scalars["weight_decay"]})
            return
        shared = {name: scalars[name] for name in ("lr", "weight_decay", "momentum", "nesterov")}
        if group["dampening"] == 0:
            arrays["buf"] = [self._states[i]["momentum_buffer"] for i in indices]
            K.SGD_MOMENTUM_STEP.foreach(arrays, shared)
            return
        # a buffer made by this step is zero: its first update runs undampened (buf = grad), as PyTorch's
        new = [i for i in indices if i in self._fresh]
        for part, dampening in (([i for i in indices if i not in new], scalars["dampening"]), (new, 0.0)):
            if part:
                K.SGD_DAMPENED_MOMENTUM_STEP.foreach(self._foreach_arrays(part, buf="momentum_buffer"),
                                                     {**shared, "dampening": dampening})
