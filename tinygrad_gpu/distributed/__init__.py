"""tg.distributed: several processes (one per GPU) training together over NCCL.

Start the processes with the launcher, `python -m tinygrad_gpu.distributed.run --nproc-per-node N
script.py`; each calls init_process_group(), which reads RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT from the environment and binds the process to GPU LOCAL_RANK. CuPy and NCCL are
imported only then, so this package imports on machines without them.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from .. import backend
from ..tensor import Tensor
from .process_group import (
    DEFAULT_TIMEOUT,
    REDUCE_OPS,
    DistributedError,
    NcclProcessGroup,
    rendezvous,
    supported_dtype,
)

__all__ = ["DistributedError", "all_gather", "all_reduce", "barrier", "broadcast", "destroy_process_group",
           "get_local_rank", "get_rank", "get_world_size", "init_process_group", "is_initialized",
           "is_main_process", "rendezvous"]

_group: Any = None
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"init_process_group: ${name} must be an integer, got {value!r}") from None


def init_process_group(backend: str = "nccl", timeout: float = DEFAULT_TIMEOUT) -> None:
    """Join the group of WORLD_SIZE processes described by the launcher's environment variables.

    Binds this process to GPU $LOCAL_RANK. Raises DistributedError when the other ranks have not
    all joined within `timeout` seconds, DeviceError when CuPy, a GPU or NCCL is missing.
    """
    global _group
    if _group is not None:
        raise DistributedError("init_process_group: this process already belongs to a group; "
                               "call destroy_process_group() first")
    if backend != "nccl":
        raise ValueError(f"init_process_group: unknown backend {backend!r}; the only backend is 'nccl'")
    if not timeout > 0:
        raise ValueError(f"init_process_group: timeout must be a positive number of seconds, got {timeout!r}")
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise DistributedError(
            f"init_process_group: the environment lacks {', '.join('$' + m for m in missing)}; start the "
            "script with `python -m tinygrad_gpu.distributed.run --nproc-per-node N script.py`")
    rank = _env_int("RANK", os.environ["RANK"])
    world_size = _env_int("WORLD_SIZE", os.environ["WORLD_SIZE"])
    local_rank = _env_int("LOCAL_RANK", os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    port = _env_int("MASTER_PORT", os.environ["MASTER_PORT"])
    if not 0 <= rank < world_size:
        raise DistributedError(f"init_process_group: RANK={rank} is outside 0..WORLD_SIZE-1 "
                               f"(WORLD_SIZE={world_size})")
    _group = NcclProcessGroup(rank, world_size, local_rank, os.environ["MASTER_ADDR"], port, timeout)
    atexit.register(_abort_at_exit)


def _abort_at_exit() -> None:
    """A process leaving without destroy_process_group() (an uncaught error, most often) must not
    wait for its peers in NCCL's teardown: the launcher then sees it exit and stops the others."""
    global _group
    if _group is not None:
        group, _group = _group, None
        try:
            group.abort()
        except Exception:  # exiting anyway; NCCL may already be torn down
            pass


def is_initialized() -> bool:
    """True between init_process_group() and destroy_process_group()."""
    return _group is not None


def _current(what: str) -> Any:
    if _group is None:
        raise DistributedError(f"{what}: no process group; call tg.distributed.init_process_group() first")
    return _group


def get_rank() -> int:
    """This process's rank (0 when no group was initialized)."""
    return 0 if _group is None else _group.rank


def get_local_rank() -> int:
    """This process's GPU index on its node (0 when no group was initialized)."""
    return 0 if _group is None else _group.local_rank


def get_world_size() -> int:
    """How many processes the group has (1 when no group was initialized)."""
    return 1 if _group is None else _group.world_size


def is_main_process() -> bool:
    """True on rank 0 (and when no group exists): the process that writes checkpoints and logs."""
    return get_rank() == 0


def group() -> Any:
    """The process group (for DistributedDataParallel); DistributedError when there is none."""
    return _current("distributed")


def barrier() -> None:
    """Wait until every rank has called barrier()."""
    _current("barrier").barrier()


def _checked_tensor(what: str, tensor: Any) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{what}: expected a Tensor, got {type(tensor).__name__}")
    if tensor.device != "cuda":
        raise DistributedError(f"{what}: the nccl backend works on 'cuda' tensors; this one is on "
                               f"{tensor.device!r} (move it with .cuda())")
    if not supported_dtype(tensor.dtype):
        raise DistributedError(f"{what}: NCCL cannot reduce dtype {tensor.dtype}")


def _in_place(tensor: Tensor, collective: Any) -> None:
    """Run collective(array) on the tensor's values, through a contiguous copy where needed."""
    array = tensor.array
    contiguous = array if array.flags.c_contiguous else array.copy()
    collective(contiguous)
    if contiguous is not array:
        array[...] = contiguous
    tensor._bump_version()  # graphs that saved the old values refuse backward()


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """Replace the tensor's values, on every rank, by their sum/avg/max/min over the ranks; returns it."""
    if op not in REDUCE_OPS:
        raise ValueError(f"all_reduce: unknown op {op!r}; choose one of {REDUCE_OPS}")
    _checked_tensor("all_reduce", tensor)
    group = _current("all_reduce")
    _in_place(tensor, lambda array: group.all_reduce(array, op))
    return tensor


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite the tensor, on every rank, with rank src's values; returns it."""
    _checked_tensor("broadcast", tensor)
    group = _current("broadcast")
    if not 0 <= src < group.world_size:
        raise ValueError(f"broadcast: src={src} is not a rank of this group (0..{group.world_size - 1})")
    _in_place(tensor, lambda array: group.broadcast(array, src))
    return tensor


def all_gather(tensor_list: list, tensor: Tensor) -> list:
    """Fill tensor_list (one tensor per rank, each shaped like `tensor`) with every rank's tensor."""
    _checked_tensor("all_gather", tensor)
    group = _current("all_gather")
    if not isinstance(tensor_list, list) or len(tensor_list) != group.world_size:
        raise ValueError(f"all_gather: tensor_list must be a list of {group.world_size} tensors "
                         "(one per rank)")
    for i, item in enumerate(tensor_list):
        _checked_tensor(f"all_gather (tensor_list[{i}])", item)
        if item.shape != tensor.shape or item.dtype != tensor.dtype:
            raise ValueError(f"all_gather: tensor_list[{i}] is {item.shape} {item.dtype}, the tensor is "
                             f"{tensor.shape} {tensor.dtype}; every entry must match it")
    cp = backend.cupy_module()
    source = cp.ascontiguousarray(tensor.array)
    gathered = cp.empty((group.world_size, *tensor.shape), tensor.dtype)
    group.all_gather(gathered, source)
    for item, values in zip(tensor_list, gathered):
        item.array[...] = values
        item._bump_version()
    return tensor_list


def destroy_process_group() -> None:
    """Leave the group and release its communicator (a no-op when there is none)."""
    global _group
    if _group is not None:
        _group.destroy()
        _group = None
