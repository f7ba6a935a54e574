"""Adagrad, with PyTorch's update rule (learning-rate decay, weight decay, initial accumulator)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import kernels as K
from ..nn.init import finite_setting
from ..tensor import Tensor
from .optimizer import Optimizer, ParamGroup


class Adagrad(Optimizer):
    """Adagrad: each coordinate's step shrinks with the sum of its squared gradients (PyTorch's rule)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": lr,
                "lr_decay": lr_decay,
                "weight_decay": weight_decay,
                "initial_accumulator_value": initial_accumulator_value,
                "eps": eps,
            },
        )

    def _checked_group(self, values: dict[str, Any]) -> dict[str, Any]:
        checked = super()._checked_group(values)
        keys = ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")
        numbers = {key: finite_setting(key, values[key]) for key in keys}
        negative = [key for key, value in numbers.items() if value < 0]
        if negative:
            raise ValueError(
                f"Adagrad: {', '.join(negative)} must be >= 0, got "
                f"{', '.join(str(values[k]) for k in negative)}"
            )
        return {**checked, **numbers}

    def _kernel_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        return {key: group[key] for key in ("lr", "lr_decay", "eps", "weight_decay")}

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("step", "sum")

    def _init_state(self, group: dict[str, Any], index: int) -> None:
        fresh = "sum" not in self._states[index]
        super()._init_state(group, index)
        if fresh:
            self._states[index]["sum"].fill(group["initial_accumulator_value"])

    def _update(self, group: ParamGroup, indices: list[int]) -> None:
        states = [self._states[i] for i in indices]
        counts = self._step_counts(states)
        arrays = self._foreach_arrays(indices, state_sum="sum")
        K.ADAGRAD_STEP.foreach(arrays, {**group.device_scalars(arrays["param"][0]), "step": counts},
                               counted="step")
