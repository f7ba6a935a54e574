"""DistributedDataParallel: every rank holds the whole model; gradients are averaged during backward.

At construction rank 0's parameters (and buffers) are broadcast to every rank. The parameters are
split into flat buckets in reverse registration order (roughly the order backward produces their
gradients), at most `bucket_cap_mb` each; after the first synchronised step they are replanned in
the order the gradients arrived (rank 0's), each ending with a backward node's gradients. As
backward finishes a parameter's gradient (a post-accumulate-grad hook), the gradient is COPIED into
its bucket; when a bucket is full its averaged all-reduce starts on a side CUDA stream while
backward goes on (every bucket but the last on a second communicator of few CTAs, where the group
offers one: see OVERLAP_CTAS). Buckets are launched in index order on every rank, so all ranks
issue the same collectives in the same order. When backward
ends, the current stream waits for the all-reduces (CUDA events, no host sync) and each parameter's
.grad becomes a view of its slot in the bucket.

A parameter that received no gradient in a step contributes ZEROS to the average: afterwards its
.grad is the average of the other ranks' gradients, so every rank takes the step one process with
the whole batch would. When no rank used it, its .grad is all zeros where one process would have
left it None (an optimizer with momentum or weight decay still moves it then); `unused_parameters`
names them.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import backend, hooks
from ..function import is_grad_enabled
from ..tensor import Tensor
from .modules import Module

# CTAs of the all-reduce kernels of every bucket but the last (process groups that offer a limited
# communicator): on 2 H200s the 64 MiB bucket of a 4096-wide MLP then runs beside the next matrix
# products instead of waiting for them (8: 158 GB/s alone, hidden; the full 299 GB/s is not)
OVERLAP_CTAS = 8
# a bucket this large ends with its backward node's gradients (see plan_buckets)
SPLIT_BYTES = 1 << 20


class _Bucket:
    """A flat array holding the gradients of a few parameters of one dtype, reduced as one."""

    def __init__(self, index: int, params: list[int], flat: Any, views: list[Any]) -> None:
        self.index, self.params, self.flat, self.views = index, params, flat, views
        self.pending = len(params)
        self.ready = self.launched = False
        self.ready_event = self.done_event = None  # CUDA events (GPU only), made on first launch


def plan_buckets(sizes: list[int], dtypes: list[Any], cap_bytes: int, order: list[int] | None = None,
                 nodes: list[int] | None = None) -> list[list[int]]:
    """Parameter indices grouped into buckets, one dtype each, at most cap_bytes each, taken in
    `order` (default: reverse registration order, roughly the order backward produces them).

    A parameter larger than the cap gets a bucket of its own. Given `nodes` (per position in
    `order`, which backward node produced the gradient), a bucket of at least SPLIT_BYTES also ends
    where one node's gradients end: it does not wait for the next node's.
    """
    buckets: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for position, i in enumerate(reversed(range(len(sizes))) if order is None else order):
        nbytes = sizes[i] * np.dtype(dtypes[i]).itemsize
        other_dtype = current and np.dtype(dtypes[current[0]]) != np.dtype(dtypes[i])
        next_node = nodes is not None and position and nodes[position] != nodes[position - 1]
        if current and (current_bytes + nbytes > cap_bytes or other_dtype
                        or (next_node and current_bytes >= SPLIT_BYTES)):
            buckets.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += nbytes
    if current:
        buckets.append(current)
    return buckets


class _Reducer:
    """Copies ready gradients into buckets and all-reduces each full bucket, in bucket order."""

    def __init__(self, params: list[Tensor], names: list[str], group: Any, cap_bytes: int) -> None:
        self.params, self.names, self.group = params, names, group
        self.side_group: Any = None  # reduces every bucket but the last, beside backward's kernels
        self.device = params[0].device
        self.cap_bytes = cap_bytes
        self.index_of = {id(p): i for i, p in enumerate(params)}
        self.arrival: list[int] = []  # parameter indices in the order the last synced backward gave them
        self.arrival_nodes: list[int] = []  # and the backward node count when each came
        self.rebuilt = False  # buckets replanned from the first synced backward's order
        self.shared_order: Any = None  # rank 0's order of arrival, broadcast after that backward
        self._build(None)
        self.armed = False  # set by a forward that will be synchronised, cleared when backward ends
        self.finished = False  # a synchronised backward ended; another needs another forward
        self.queued = False
        self.next_bucket = 0
        self.got_grad: set[int] = set()
        self.unused: list[str] = []  # names of the parameters without a gradient in the last synced step
        self._stream = None
        # the hooks hold the reducer weakly, and go when it goes: a dropped DDP frees its buckets
        this = weakref.ref(self)

        def hook(param: Tensor) -> None:
            reducer = this()
            if reducer is not None:
                reducer._grad_ready(param)

        handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
        weakref.finalize(self, lambda: [handle.remove() for handle in handles])

    def _build(self, order: list[int] | None, nodes: list[int] | None = None) -> None:
        """Plan the buckets (in `order`, split by `nodes`) and allocate their flat arrays and the
        parameters' views (unless the plan is the one already built)."""
        params = self.params
        xp = backend.array_module(self.device)
        plan = plan_buckets([p.size for p in params], [p.dtype for p in params], self.cap_bytes, order, nodes)
        if getattr(self, "plan", None) == plan:
            return
        self.plan = plan
        self.buckets: list[_Bucket] = []
        self.slot: dict[int, tuple[_Bucket, int]] = {}  # id(param) -> (its bucket, its view index)
        for index, members in enumerate(self.plan):
            flat = xp.zeros(sum(params[i].size for i in members), params[members[0]].dtype)
            views, offset = [], 0
            for i in members:
                views.append(flat[offset:offset + params[i].size].reshape(params[i].shape))
                offset += params[i].size
            bucket = _Bucket(index, members, flat, views)
            for k, i in enumerate(members):
                self.slot[id(params[i])] = (bucket, k)
            self.buckets.append(bucket)

    def _share_order(self) -> None:
        """At the end of the first synced backward: send rank 0's order of arrival to every rank (the
        ranks that left other parameters unused saw another order); _replan uses it next step."""
        if self.shared_order is not None:
            return
        seen = set(self.arrival)
        rest = [i for i in reversed(range(len(self.params))) if i not in seen]
        order = self.arrival + rest
        nodes = self.arrival_nodes + [(self.arrival_nodes[-1] if self.arrival_nodes else 0) + 1] * len(rest)
        self.shared_order = backend.array_module(self.device).asarray(np.asarray([order, nodes], np.int64))
        self.group.broadcast(self.shared_order, 0)

    def _replan(self) -> None:
        """Order the buckets as the first synced backward's gradients arrived (as PyTorch's DDP rebuilds
        its buckets): a bucket is then full as soon as its last gradient exists, not when a later
        layer's bias, which the default reverse order put beside it, is done too."""
        from ..jit import capture_state

        if self.rebuilt or self.shared_order is None or capture_state.active:
            return  # (not while a graph is captured: reading the order back needs the host)
        self.rebuilt = True
        shared = self.shared_order
        order, nodes = (shared.get() if hasattr(shared, "get") else shared).tolist()
        self._build(order, nodes)

    def prepare(self, sync: bool) -> None:
        """Start a step: the next backward averages gradients when sync is True."""
        if sync:
            self._replan()  # (the gradients stay views of the old buckets until the next step copies)
        self.armed, self.finished, self.queued = sync, False, False
        self.next_bucket = 0
        self.got_grad.clear()
        self.arrival.clear()
        self.arrival_nodes.clear()
        for bucket in self.buckets:
            bucket.pending, bucket.ready, bucket.launched = len(bucket.params), False, False

    def _grad_ready(self, param: Tensor) -> None:
        if not self.armed:
            if self.finished:
                raise RuntimeError(
                    "DistributedDataParallel: backward() reached the model twice after one forward; its "
                    "gradients were already averaged. Run the forward again for each backward (or "
                    "accumulate inside ddp.no_sync())")
            return
        if not self.queued:  # flush what is left (unused parameters) when this backward ends
            hooks.queue_end_of_backward(self._finish)
            self.queued = True
        key = id(param)
        if key in self.got_grad:
            return
        self.got_grad.add(key)
        self.arrival.append(self.index_of[key])
        self.arrival_nodes.append(hooks.backward_nodes)
        bucket, k = self.slot[key]
        if param.grad.array is not bucket.views[k]:  # (a gradient accumulated in place is there already)
            bucket.views[k][...] = param.grad.array
        bucket.pending -= 1
        if bucket.pending == 0:
            bucket.ready = True
            self._launch_ready()

    def _launch_ready(self) -> None:
        """Start every ready bucket whose predecessors have started (same order on every rank)."""
        while self.next_bucket < len(self.buckets) and self.buckets[self.next_bucket].ready:
            self._launch(self.buckets[self.next_bucket])
            self.next_bucket += 1

    def _launch(self, bucket: _Bucket) -> None:
        bucket.launched = True
        # the early buckets overlap backward's matrix products: on few CTAs they fit beside them; the
        # last bucket overlaps nothing, so it takes the whole GPU
        group = self.side_group if self.side_group is not None and bucket.index < len(self.buckets) - 1 \
            else self.group
        if self.device == "cpu":
            group.all_reduce(bucket.flat, "avg")
            return
        cp = backend.cupy_module()
        if self._stream is None:
            # non-blocking: the legacy default stream must not serialise with it
            self._stream = cp.cuda.Stream(non_blocking=True)
        if bucket.ready_event is None:
            bucket.ready_event = cp.cuda.Event(disable_timing=True)
            bucket.done_event = cp.cuda.Event(disable_timing=True)
        bucket.ready_event.record(cp.cuda.get_current_stream())  # the copies into the bucket
        self._stream.wait_event(bucket.ready_event)
        try:
            group.all_reduce(bucket.flat, "avg", stream=self._stream)
        except Exception as exc:
            from ..jit import CaptureError, capture_state
            if capture_state.active:
                raise CaptureError(f"DistributedDataParallel: the NCCL all-reduce of bucket {bucket.index} "
                                   f"could not be captured ({exc.__class__.__name__}: {exc})") from exc
            raise
        bucket.done_event.record(self._stream)

    def _finish(self) -> None:
        """End of backward: reduce the buckets still waiting, then point every .grad at its slot."""
        self.unused = []
        for i, param in enumerate(self.params):
            if id(param) in self.got_grad:
                continue
            self.unused.append(self.names[i])
            bucket, k = self.slot[id(param)]
            view = bucket.views[k]
            if param.grad is None:
                view.fill(0)
            elif param.grad.array is not view:
                view[...] = param.grad.array
            bucket.pending -= 1
            if bucket.pending == 0:
                bucket.ready = True
        self._launch_ready()
        if self.device == "cuda":
            current = backend.cupy_module().cuda.get_current_stream()
            for bucket in self.buckets:
                current.wait_event(bucket.done_event)  # the optimizer's kernels follow the all-reduces
        for bucket in self.buckets:
            for k, i in enumerate(bucket.params):
                grad = self.params[i].grad
                if grad is None or grad.array is not bucket.views[k]:
                    self.params[i].grad = Tensor._from_array(bucket.views[k])
        self.armed, self.finished = False, True
        self._share_order()


def _named_buffers(module: Module) -> list[tuple[str, Tensor]]:
    named = getattr(module, "named_buffers", None)
    return list(named()) if callable(named) else []


class DistributedDataParallel(Module):
    """Wrap a module so that backward() averages its gradients over every rank of the process group.

    `process_group` defaults to the one made by tg.distributed.init_process_group(); any object
    with rank, world_size, all_reduce(array, op, stream=None) and broadcast(array, src, stream=None)
    works (tests use an in-process one on the CPU).
    """

    def __init__(self, module: Module, bucket_cap_mb: float = 25, broadcast_buffers: bool = True,
                 process_group: Any = None) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a tg.nn.Module, got {type(module).__name__}")
        if not (isinstance(bucket_cap_mb, (int, float)) and bucket_cap_mb > 0):
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be a positive number, "
                             f"got {bucket_cap_mb!r}")
        named = []
        seen: set[int] = set()
        for name, p in module.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                named.append((name, p))
        if not named:
            raise ValueError("DistributedDataParallel: the module has no parameter that requires grad")
        devices = sorted({p.device for _, p in named})
        if len(devices) > 1:
            raise ValueError(f"DistributedDataParallel: the module's parameters are on several devices "
                             f"{devices}; move the module to one (module.to('cuda'))")
        if process_group is None:
            from .. import distributed
            process_group = distributed.group()
            if devices[0] != "cuda":
                raise ValueError("DistributedDataParallel: the nccl backend needs the module on 'cuda'; "
                                 f"its parameters are on {devices[0]!r} (call module.to('cuda') first)")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.require_backward_grad_sync = True
        self._group = process_group
        params = [p for _, p in named]
        for tensor in params + [b for _, b in _named_buffers(module)]:
            self._broadcast(tensor)
        self._reducer = _Reducer(params, [name for name, _ in named], process_group,
                                 int(bucket_cap_mb * 1024 * 1024))
        limited = getattr(process_group, "limited_group", None)
        if limited is not None and len(self._reducer.plan) > 1:  # (one bucket: nothing to overlap)
            self._reducer.side_group = limited(OVERLAP_CTAS)

    def _broadcast(self, tensor: Tensor) -> None:
        """Overwrite a parameter or buffer with rank 0's values (one contiguous array)."""
        array = tensor.array
        source = array if array.flags.c_contiguous else array.copy()
        self._group.broadcast(source, 0)
        if source is not array:
            array[...] = source
        tensor._bump_version()

    @property
    def bucket_plan(self) -> list[list[str]]:
        """The parameter names in each bucket, in the order the buckets are reduced."""
        return [[self._reducer.names[i] for i in bucket] for bucket in self._reducer.plan]

    @property
    def unused_parameters(self) -> list[str]:
        """Names of the parameters that got no gradient on this rank in the last averaged backward."""
        return list(self._reducer.unused)

    def forward(self, *args: Any) -> Any:
        """Run the wrapped module; the backward that follows averages gradients unless in no_sync()."""
        if self.broadcast_buffers:
            for _, buffer in _named_buffers(self.module):
                self._broadcast(buffer)
        self._reducer.prepare(sync=is_grad_enabled() and self.require_backward_grad_sync)
        return self.module(*args)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside, forward/backward only accumulate local gradients; the first step after syncs them all."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    def extra_repr(self) -> str:
        """Settings shown in repr()."""
        return f"world_size={self._group.world_size}, buckets={len(self._reducer.plan)}"
