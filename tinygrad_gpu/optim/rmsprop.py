"""RMSprop (optionally centered, with momentum), with PyTorch's update rule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import kernels as K
from ..nn.init import finite_setting
from ..tensor import Tensor
from .optimizer import Optimizer, ParamGroup, checked_flag

_ROWS = {
    (False, False): K.RMSPROP_STEP,
    (False, True): K.RMSPROP_MOMENTUM_STEP,
    (True, False): K.RMSPROP_CENTERED_STEP,
    (True, True): K.RMSPROP_CENTERED_MOMENTUM_STEP,
}


class RMSprop(Optimizer):
    """RMSprop: divide the gradient by a running root mean square (PyTorch's rule and defaults)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": lr,
                "alpha": alpha,
                "eps": eps,
                "weight_decay": weight_decay,
                "momentum": momentum,
                "centered": centered,
            },
        )

    def _checked_group(self, values: dict[str, Any]) -> dict[str, Any]:
        checked = super()._checked_group(values)
        numbers = {
            key: finite_setting(key, values[key]) for key in ("alpha", "eps", "weight_decay", "momentum")
        }
        negative = [key for key, value in numbers.items() if value < 0]
        if negative:
            raise ValueError(
                f"RMSprop: {', '.join(negative)} must be >= 0, got "
                f"{', '.join(str(values[k]) for k in negative)}"
            )
        return {**checked, **numbers, "centered": checked_flag("centered", values["centered"])}

    def _kernel_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        return {key: group[key] for key in K.RMSPROP_SCALARS}

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return (
            ("step", "square_avg")
            + (("momentum_buffer",) if group["momentum"] > 0 else ())
            + (("grad_avg",) if group["centered"] else ())
        )

    def _update(self, group: ParamGroup, indices: list[int]) -> None:
        states = [self._states[i] for i in indices]
        self._count_step(states)  # kept for PyTorch's state layout
        centered, with_momentum = group["centered"], group["momentum"] > 0
        names = ("square_avg",) + (("grad_avg",) if centered else ()) + \
            (("momentum_buffer",) if with_momentum else ())
        arrays = self._foreach_arrays(indices, *names)
        _ROWS[centered, with_momentum].foreach(arrays, group.device_scalars(arrays["param"][0]))
