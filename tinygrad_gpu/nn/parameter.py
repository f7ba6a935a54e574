"""Parameter: a Tensor that a Module registers as one of its parameters when it is assigned."""

from __future__ import annotations

from typing import Any

from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor marked as a module parameter (requires_grad=True unless told otherwise).

    Made from a Tensor it shares that tensor's memory and version counter, as PyTorch's does.
    A Module keeps it in state_dict() and parameters() even after requires_grad_(False).
    """

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        if isinstance(data, Tensor):
            super().__init__(data, requires_grad, device=data.device, dtype=data.dtype)
        else:
            super().__init__(data, requires_grad)
