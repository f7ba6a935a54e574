"""Adam and AdamW (optionally AMSGrad), with PyTorch's update rules."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .. import kernels as K
from ..nn.init import finite_setting
from ..tensor import Tensor
from .optimizer import Optimizer, ParamGroup, checked_flag


class Adam(Optimizer):
    """Adam with PyTorch's update rule: bias-corrected moments; weight_decay is added to the gradient.

    Each parameter's step count lives beside it, in device memory on the GPU, and the kernel
    derives the bias corrections from it: a step is one launch per group, device and dtype
    (count and update every parameter, its moments in place), reads nothing back, and replays
    correctly when captured by tg.jit. Counts are kept in the parameters' dtype (float32 counts
    exactly to 2**24 steps; by then both bias corrections are 1).
    """

    LATER_SETTINGS = {"amsgrad": False}
    _ROW, _AMSGRAD_ROW = K.ADAM_STEP, K.ADAM_AMSGRAD_STEP

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad}
        )

    @property
    def steps(self) -> list[int]:
        """How many updates each parameter has had (reads the counts back from the device)."""
        return [0 if count is None else int(count) for count in self._state_list("step")]

    @property
    def exp_avgs(self) -> list[Any]:
        """Each parameter's first moment (None before its first update)."""
        return self._state_list("exp_avg")

    @property
    def exp_avg_sqs(self) -> list[Any]:
        """Each parameter's second moment (None before its first update)."""
        return self._state_list("exp_avg_sq")

    def _checked_group(self, values: dict[str, Any]) -> dict[str, Any]:
        checked = super()._checked_group(values)
        if not isinstance(values["betas"], (tuple, list)):
            raise TypeError(f"betas must be a pair of numbers, got {type(values['betas']).__name__}")
        betas = tuple(finite_setting("betas", b) for b in values["betas"])
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {values['betas']!r}")
        eps = finite_setting("eps", values["eps"])
        weight_decay = finite_setting("weight_decay", values["weight_decay"])
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        return {
            **checked,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": checked_flag("amsgrad", values["amsgrad"]),
        }

    def _kernel_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        beta1, beta2 = group["betas"]
        # log(0) is -inf, and -expm1(step * -inf) = 1: no bias correction for a zero beta
        return {
            "lr": group["lr"],
            "beta1": beta1,
            "beta2": beta2,
            "log_beta1": math.log(beta1) if beta1 else -math.inf,
            "log_beta2": math.log(beta2) if beta2 else -math.inf,
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
        }

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def _update(self, group: ParamGroup, indices: list[int]) -> None:
        states = [self._states[i] for i in indices]
        counts = self._step_counts(states)
        names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())
        arrays = self._foreach_arrays(indices, *names)
        row = self._AMSGRAD_ROW if group["amsgrad"] else self._ROW
        row.foreach(arrays, {**group.device_scalars(arrays["param"][0]), "step": counts}, counted="step")


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's AdamW): param *= 1 - lr * weight_decay, then Adam."""

    _ROW, _AMSGRAD_ROW = K.ADAMW_STEP, K.ADAMW_AMSGRAD_STEP

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
