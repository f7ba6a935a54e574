"""Softmax cross-entropy of integer labels as one primitive: the common case of F.cross_entropy.

The composed form (log_softmax: 6 launches; the device-side label check and ignore mask: 16; the
gather, weights and weighted mean: about 12; their backward: about 12) costs some 45 small launches
per training step on the GPU, and a step of a small classifier is bound by launches, not by
arithmetic. `CrossEntropy` does the same math in three: two forward, one backward (PyTorch: 4).

- rows (one warp per row, rows grid-strided): the row's max m and log-sum s = log(sum exp(x - m)),
  its label's fate (scored, ignored, or out of range), its loss s - (x[label] - m) (0 unless
  scored), and per block, in a fixed order, the summed loss, the count of scored rows and the
  first bad row.
- total (one block): the blocks' partial results reduced in a fixed tree, the output (sum / count
  for "mean", 0 / 0 = NaN when every label is ignored, as in PyTorch; the sum for "sum"), and the
  label check: the first row with a label out of range is recorded into device_checks' error buffer
  exactly as device_checks.record_first_bad records it, raised at the next read back to the host.
- grad (elementwise over N x C): g (exp(x - m - s) - [c == label]) on scored rows, 0 elsewhere
  (NaN where such a row's softmax is NaN, as in PyTorch); g = gy / count, gy or gy[r], read on the
  device (no host read: the step can be captured).

Small losses (one block, total folded into rows) that will be differentiated also write grad's
result for gy = 1 in their forward launch: backward() started from the loss then costs no launch.

The NumPy twin does the same math in the same order. Host labels are checked at once, as
everywhere else (device_checks.check_in_range), before anything runs.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import device_checks, ops
from . import kernels as K
from .backend import array_module, cupy_module, device_of, is_cupy_array, move, plain_array
from .caches import LRU
from .function import Function, is_grad_enabled
from .launch import Prepared
from .memory import out_of_memory

REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}
_IGNORED, _BAD = -1, -2  # a row's target when its label is ignored / out of range (else the label)
_THREADS = 256  # rows: 8 warps per block, one row per warp at a time
_MAX_BLOCKS = 1024  # 8192 warps keep an H100/H200 busy; the grid depends on the shape only (deterministic)
# Small batches take one block of ONE_BLOCK_THREADS, which also finishes the loss (one launch, not
# two or three). A warp scores its rows one after another, each a chain of dependent steps (a
# microsecond or so), so one block is worth it only while every warp has a few rows: at most
# ONE_BLOCK_ROWS rows (and ONE_BLOCK_ELEMENTS logits); larger batches spread over many blocks.
ONE_BLOCK_ELEMENTS = 1 << 16
ONE_BLOCK_ROWS = 256
ONE_BLOCK_THREADS = 1024
_GRAD_BLOCKS = 4096


# ---- which calls take the fused path ----------------------------------------------------------
def fused_labels(input: Any, target: Any, ignore_index: Any) -> Any:
    """The array of integer class labels to hand to CrossEntropy, or None when this call takes the
    composed path: logits (N, C) or (C,) of float32/float64 with N, C >= 1; labels an integer
    Tensor, array or list of shape (N,) (a 0-d label for (C,)) on the logits' device or the host;
    an int (or None) ignore_index. Anything else (probabilities, other shapes, float labels) is left to the
    composed path, which also names every mistake."""
    from .tensor import Tensor

    if input.ndim not in (1, 2) or input.dtype not in (np.float32, np.float64) or 0 in input.shape:
        return None
    if ignore_index is not None and (not isinstance(ignore_index, (int, np.integer))
                                     or isinstance(ignore_index, (bool, np.bool_))
                                     or not -2**63 <= int(ignore_index) < 2**63):
        return None
    if isinstance(target, Tensor):
        labels = target.array
    elif is_cupy_array(target) or type(target) is np.ndarray:
        labels = target
    elif isinstance(target, (list, tuple, int, np.integer)) and not isinstance(target, (bool, np.bool_)):
        try:
            labels = np.asarray(plain_array(target, ""))
        except (TypeError, ValueError, OverflowError):
            return None
    else:
        return None  # masked arrays, memmaps, matrices...: the composed path says what to do
    if getattr(labels, "dtype", None) is None or labels.dtype.kind not in "iu":
        return None
    if labels.shape != input.shape[:-1]:
        return None
    if type(labels) is not np.ndarray and device_of(labels) != input.device:
        return None  # device labels on another device: the composed path moves them
    return labels


@functools.lru_cache(maxsize=64)
def _label_message(shape: tuple, dtype: Any) -> str:
    """The error for a label out of range of logits of this shape and dtype (`{value}` where the
    label goes), made once per shape and dtype: formatting it costs more than the rest of a small
    loss's call."""
    # the words of the composed path, so that errors read (and tests match) the same
    return (f"nll_loss (input shape {shape}, dtype {dtype}): class label {{value}} is out of range "
            f"for {shape[-1]} classes")


def cross_entropy(input: Any, labels: Any, reduction: str, ignore_index: int | None) -> Any:
    """The fused loss of logits `input` (a Tensor) against `labels` from fused_labels."""
    message = _label_message(input.array.shape, input.array.dtype)
    ignore = None if ignore_index is None else int(ignore_index)
    # backward() will likely start here: the GPU's forward launch can leave the gradient ready
    seed_grad = input.requires_grad and is_grad_enabled()
    return CrossEntropy.apply(input, labels=labels, reduction=reduction, ignore_index=ignore, message=message,
                              seed_grad=seed_grad)


# ---- the primitive ----------------------------------------------------------------------------------
class CrossEntropy(Function):
    """-log softmax(x)[label] per row of (N, C) logits (or one (C,) row), reduced as asked; labels
    equal to ignore_index count for nothing."""

    def forward(self, x, labels, reduction, ignore_index, message, seed_grad=False):
        device = device_of(x)
        xp = array_module(device)
        self.shape, self.reduction = x.shape, reduction
        rows = xp.ascontiguousarray(x).reshape(-1, x.shape[-1])
        labels = labels.reshape(-1)
        deferred = device_checks.deferred(labels)
        if not deferred:  # host labels: checked at once, as the composed path does
            scored = labels if ignore_index is None else labels * (labels != ignore_index)
            device_checks.check_in_range(scored, 0, rows.shape[1], IndexError, message)
        labels = move(labels, device)
        self.x, self.label_dtype = rows, labels.dtype
        if xp is np:
            with K.silenced_numpy():  # inf and NaN follow IEEE rules quietly, as on the GPU
                results = _cpu_forward(rows, labels, reduction, ignore_index) + (None,)
            if deferred:  # (DEFER_ON_CPU) what the total kernel records, in NumPy
                device_checks.record_first_bad(results[2] == _BAD, labels, IndexError, message)
        else:
            check = device_checks._check_id(IndexError, message, "i")
            results = _gpu_forward(rows, labels, reduction, ignore_index, check, seed_grad)
            if deferred:  # the next read back to the host looks at the buffer
                device_checks._armed.add(device)
        out, self.stats, self.targets, self.count, self.seed_grad = results
        return out.reshape(()) if reduction == "none" and len(self.shape) == 1 else out

    def backward(self, gy):
        if self.seed_grad is not None and _tensor.is_ones_seed(gy):  # computed by forward's launch
            grad, self.seed_grad = self.seed_grad, None  # handed out once: a later backward computes anew
            return (grad.reshape(self.shape),)
        xp = array_module(device_of(gy))
        gy = xp.ascontiguousarray(gy).reshape(-1)
        if xp is np:
            with K.silenced_numpy():
                gx = _cpu_grad(self.x, self.stats, self.targets, self.count, gy, self.reduction)
        else:
            gx = _gpu_grad(self.x, self.stats, self.targets, self.count, gy, self.reduction, self.label_dtype)
        return (gx.reshape(self.shape),)

    def backward_graph(self, gy: Any) -> tuple:
        """scale * (softmax(x) - onehot(label)) on scored rows, in recorded tensor ops: the softmax
        stays differentiable (second derivatives), the one-hot mask and 1 / count are constants."""
        x = self.inputs[0]
        xp = array_module(x.device)
        n, c = self.x.shape
        dtype = self.x.dtype
        targets = self.targets
        scored = (targets >= 0).astype(dtype).reshape(n, 1)
        one_hot = (xp.arange(c).reshape(1, c) == targets.reshape(n, 1)).astype(dtype)  # never for -1, -2
        probabilities = x.reshape(n, c).softmax(axis=1) * ops._constant(scored)
        if self.reduction == "none":
            scale = gy.reshape(n, 1)
        elif self.reduction == "sum":
            scale = gy.reshape(1, 1)
        else:  # 1 / count, 0 when nothing counts (every row's gradient is 0 then, as in PyTorch)
            count = self.count
            inverse = xp.where(count > 0, 1.0 / xp.maximum(count, 1), 0.0).astype(dtype)
            scale = gy.reshape(1, 1) * ops._constant(inverse.reshape(1, 1))
        gx = scale * (probabilities - ops._constant(one_hot))
        return (gx.reshape(self.shape),)


# ---- the NumPy twin -----------------------------------------------------------------------------
def _targets(labels: Any, classes: int, ignore_index: int | None) -> Any:
    """Per row: its label when scored, _IGNORED or _BAD otherwise (the kernels' tg_target)."""
    labels = labels.astype(np.int64)  # as the kernels read them: (long long)label
    targets = np.where((labels >= 0) & (labels < classes), labels, np.int64(_BAD))
    if ignore_index is not None:
        targets = np.where(labels == ignore_index, np.int64(_IGNORED), targets)
    return targets


def _cpu_forward(x: np.ndarray, labels: np.ndarray, reduction: str, ignore_index: int | None) -> tuple:
    """The rows and total kernels in NumPy: (output, stats (2, N), targets (N,), count ())."""
    n, c = x.shape
    peak = x.max(axis=1)  # NaN propagates
    shifted = x - peak[:, None]
    log_sum = np.log(np.exp(shifted).sum(axis=1))
    targets = _targets(labels, c, ignore_index)
    scored = targets >= 0
    picked = shifted[np.arange(n), np.where(scored, targets, 0)]
    # the composed path's order: -((x - m) - s) = s - (x - m), in the logits' dtype
    losses = np.where(scored, log_sum - picked, x.dtype.type(0)).astype(x.dtype, copy=False)
    count = np.asarray(np.count_nonzero(scored), np.int64)
    total = losses.astype(np.float64).sum()  # the kernels add in double too
    if reduction == "none":
        out = losses
    elif reduction == "sum":
        out = np.asarray(total, x.dtype)
    else:
        out = np.asarray(total / np.float64(count), x.dtype)  # 0 / 0 = NaN: every label ignored
    return out, np.stack([peak, log_sum]), targets, count


def _cpu_grad(x: np.ndarray, stats: np.ndarray, targets: np.ndarray, count: np.ndarray, gy: np.ndarray,
              reduction: str) -> np.ndarray:
    """The grad kernel in NumPy: g p, and g (p - 1) at the label; a row that counts for nothing gets
    0 p (0, or NaN where its softmax is NaN, as PyTorch)."""
    n = x.shape[0]
    scored = targets >= 0
    if reduction == "none":
        g = gy
    elif reduction == "sum":
        g = np.broadcast_to(gy, (n,))
    else:
        g = np.broadcast_to(gy / x.dtype.type(count), (n,))
    g = np.where(scored, g, x.dtype.type(0))
    grad = x - stats[0][:, None]
    grad -= stats[1][:, None]
    np.exp(grad, out=grad)  # p
    rows = np.flatnonzero(scored)
    labels = targets[rows]
    at_label = g[rows] * (grad[rows, labels] - x.dtype.type(1))
    grad *= g[:, None]
    grad[rows, labels] = at_label
    return grad

# ---- the GPU's three launches -----------------------------------------------------------------------
_SOURCE = r"""
typedef {ctype} T;
typedef {label_ctype} L;

// The class a row is scored against; -1 when its label is ignored, -2 when it is out of range.
__device__ __forceinline__ long long tg_target(long long label, long long classes, long long ignore,
                                               int use_ignore) {{
  if (use_ignore && label == ignore) return -1;
  return (label >= 0 && label < classes) ? label : -2;
}}

__device__ __forceinline__ T tg_max(T a, T b) {{ return (b > a || b != b) ? b : a; }}  // NaN wins

// The output (mean or sum; "none" has its per-row losses already), the count of scored rows, and
// the first bad row's label into the device check buffer [check id, value] unless an error is there.
__device__ __forceinline__ void tg_xent_finish(double sum, long long count, long long bad,
                                               const L* __restrict__ labels, long long rows,
                                               int reduction, T* __restrict__ out,
                                               long long* __restrict__ count_out,
                                               long long* __restrict__ check_buffer, long long check_id) {{
  if (reduction == 0) out[0] = (T)(sum / (double)count);  // 0 / 0 = NaN: all ignored
  else if (reduction == 1) out[0] = (T)sum;
  count_out[0] = count;
  if (bad < rows && check_buffer[0] == 0) {{  // as device_checks.record_first_bad
    check_buffer[1] = (long long)labels[bad];
    check_buffer[0] = check_id;
  }}
}}

// partial: [blocks] summed losses (double bits), [blocks] scored rows, [blocks] first bad row (rows
// when none). Rows are grid-strided by warp; each warp keeps its totals in lane 0, then thread 0
// adds the block's warps in order: the same grid (a function of rows only) gives the same bits.
// A grid of one block finishes the loss itself (tg_xent_finish; partial is not used).
extern "C" __global__ void __launch_bounds__({one_block})
tg_xent_rows(const T* __restrict__ x, const L* __restrict__ labels, long long rows, long long classes,
             long long ignore, int use_ignore, T* __restrict__ losses, T* __restrict__ stats,
             long long* __restrict__ targets, long long* __restrict__ partial, int reduction,
             T* __restrict__ out, long long* __restrict__ count_out, long long* __restrict__ check_buffer,
             long long check_id, T* __restrict__ seed_grad) {{
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps_per_block = blockDim.x >> 5;
  const long long all_warps = (long long)gridDim.x * warps_per_block;
  double sum = 0.0;
  long long count = 0, bad = rows;
  // r is the same for all 32 lanes: every lane reaches every shuffle below
  for (long long r = (long long)blockIdx.x * warps_per_block + warp; r < rows; r += all_warps) {{
    const T* row = x + r * classes;
    T peak = (T)__int_as_float(0xff800000);  // -inf
    for (long long c = lane; c < classes; c += 32) peak = tg_max(peak, row[c]);
    for (int offset = 16; offset > 0; offset >>= 1)
      peak = tg_max(peak, __shfl_xor_sync(0xffffffffu, peak, offset));
    T total = 0;
    for (long long c = lane; c < classes; c += 32) total += exp(row[c] - peak);
    for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_down_sync(0xffffffffu, total, offset);
    if (lane == 0) {{
      const T log_sum = log(total);
      const long long target = tg_target((long long)labels[r], classes, ignore, use_ignore);
      T loss = 0;
      if (target >= 0) {{
        loss = log_sum - (row[target] - peak);
        sum += (double)loss;
        count += 1;
      }} else if (target == -2 && bad == rows) {{
        bad = r;  // a warp's rows only grow: its first bad row is its smallest
      }}
      losses[r] = loss;
      stats[r] = peak;
      stats[rows + r] = log_sum;
      targets[r] = target;
    }}
  }}
  __shared__ double warp_sums[32];
  __shared__ long long warp_counts[32], warp_bads[32], scored;
  if (lane == 0) {{
    warp_sums[warp] = sum;
    warp_counts[warp] = count;
    warp_bads[warp] = bad;
  }}
  __syncthreads();
  if (threadIdx.x == 0) {{
    double block_sum = 0.0;
    long long block_count = 0, block_bad = rows;
    for (int w = 0; w < warps_per_block; ++w) {{
      block_sum += warp_sums[w];
      block_count += warp_counts[w];
      block_bad = min(block_bad, warp_bads[w]);
    }}
    if (gridDim.x == 1) {{
      tg_xent_finish(block_sum, block_count, block_bad, labels, rows, reduction, out, count_out,
                     check_buffer, check_id);
      scored = block_count;
    }} else {{
      reinterpret_cast<double*>(partial)[blockIdx.x] = block_sum;
      partial[gridDim.x + blockIdx.x] = block_count;
      partial[2 * gridDim.x + blockIdx.x] = block_bad;
    }}
  }}
  // A grid of one block also writes d loss / d x for backward() started from 1 (the engine's own
  // seed): tg_xent_grad's formula with gy = 1, so backward then needs no launch of its own.
  if (gridDim.x == 1 && seed_grad != nullptr) {{
    __syncthreads();  // the rows' stats and targets, and the count, are all written
    T g = 0;
    if (reduction == 1) g = (T)1;
    else if (reduction == 0 && scored > 0) g = (T)1 / (T)scored;
    for (long long i = threadIdx.x; i < rows * classes; i += blockDim.x) {{
      const long long r = i / classes, c = i - r * classes;
      const long long target = targets[r];
      const T p = exp((x[i] - stats[r]) - stats[rows + r]);
      seed_grad[i] = target >= 0 ? g * (c == target ? p - (T)1 : p) : (T)0 * p;
    }}
  }}
}}

// One block of {threads} threads (a power of two): the partial results in a fixed tree, then
// tg_xent_finish.
extern "C" __global__ void tg_xent_total(const long long* __restrict__ partial, int blocks,
                                         const L* __restrict__ labels, long long rows, int reduction,
                                         T* __restrict__ out, long long* __restrict__ count_out,
                                         long long* __restrict__ check_buffer, long long check_id) {{
  __shared__ double sums[{threads}];
  __shared__ long long counts[{threads}], bads[{threads}];
  const int t = threadIdx.x;
  double sum = 0.0;
  long long count = 0, bad = rows;
  for (int i = t; i < blocks; i += blockDim.x) {{
    sum += reinterpret_cast<const double*>(partial)[i];
    count += partial[blocks + i];
    bad = min(bad, partial[2 * blocks + i]);
  }}
  sums[t] = sum;
  counts[t] = count;
  bads[t] = bad;
  __syncthreads();
  for (int half = blockDim.x >> 1; half > 0; half >>= 1) {{
    if (t < half) {{
      sums[t] += sums[t + half];
      counts[t] += counts[t + half];
      bads[t] = min(bads[t], bads[t + half]);
    }}
    __syncthreads();
  }}
  if (t == 0) tg_xent_finish(sums[0], counts[0], bads[0], labels, rows, reduction, out, count_out,
                             check_buffer, check_id);
}}

// d loss / d x: g (softmax - onehot) on scored rows, 0 elsewhere; g read here, on the device.
{grad_kernels}
"""

_GRAD_SOURCE = r"""
extern "C" __global__ void tg_xent_grad_{bits}(const T* __restrict__ x, const T* __restrict__ stats,
                                               const long long* __restrict__ targets,
                                               const T* __restrict__ gy,
                                               const long long* __restrict__ count, int reduction,
                                               {index} rows, {index} classes, T* __restrict__ gx) {{
  const {index} n = rows * classes;
  T g = 0;
  if (reduction == 1) g = gy[0];
  else if (reduction == 0 && count[0] > 0) g = gy[0] / (T)count[0];
  const {index} stride = ({index})gridDim.x * blockDim.x;
  for ({index} i = ({index})blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {{
    const {index} r = i / classes, c = i - r * classes;
    const long long target = targets[r];
    const T p = exp((x[i] - stats[r]) - stats[rows + r]);
    // a row that counts for nothing gets 0, or NaN where its softmax is NaN (as PyTorch's 0 * p)
    gx[i] = target >= 0 ? (reduction == 2 ? gy[r] : g) * (c == target ? p - (T)1 : p) : (T)0 * p;
  }}
}}
"""

_LABEL_CTYPES = {("i", 1): "signed char", ("u", 1): "unsigned char", ("i", 2): "short",
                 ("u", 2): "unsigned short", ("i", 4): "int", ("u", 4): "unsigned int",
                 ("i", 8): "long long", ("u", 8): "unsigned long long"}
# one module per logits dtype and label dtype: at most 2 x 8
_gpu_modules = LRU(32)


def source(dtype: Any, label_dtype: Any) -> str:
    """The CUDA source of the three kernels for these logits and label dtypes."""
    dtype, label_dtype = np.dtype(dtype), np.dtype(label_dtype)
    grads = "".join(_GRAD_SOURCE.format(bits=bits, index=index)
                    for bits, index in ((32, "int"), (64, "long long")))
    return _SOURCE.format(ctype="float" if dtype == np.float32 else "double",
                          label_ctype=_LABEL_CTYPES[label_dtype.kind, label_dtype.itemsize],
                          threads=_THREADS, one_block=ONE_BLOCK_THREADS, grad_kernels=grads)


def _gpu_kernels(dtype: Any, label_dtype: Any) -> Any:
    key = (np.dtype(dtype).char, np.dtype(label_dtype).str)
    kernels = _gpu_modules.get(key)
    if kernels is None:
        kernels = Prepared.module(source(dtype, label_dtype), "tg_xent_rows", "tg_xent_total",
                                  "tg_xent_grad_32", "tg_xent_grad_64")
        _gpu_modules[key] = kernels
    return kernels


def _row_blocks(n: int, c: int) -> int:
    if n * c <= ONE_BLOCK_ELEMENTS and n <= ONE_BLOCK_ROWS:
        return 1
    return min(_MAX_BLOCKS, -(-n // (_THREADS // 32)))


def _gpu_forward(x: Any, labels: Any, reduction: str, ignore_index: int | None, check: int,
                 seed_grad: bool) -> tuple:
    """(out, stats, targets, count, gradient for a ones seed or None) of the GPU's loss launch(es)."""
    cp = cupy_module()
    n, c = x.shape
    rows_kernel, total_kernel, _, _ = _gpu_kernels(x.dtype, labels.dtype)
    blocks = _row_blocks(n, c)
    seed_grad = seed_grad and blocks == 1 and reduction != "none"
    try:
        grad = cp.empty((n, c), x.dtype) if seed_grad else None
        labels = cp.ascontiguousarray(labels)
        losses = cp.empty(n, x.dtype)
        stats = cp.empty((2, n), x.dtype)
        targets = cp.empty(n, np.int64)
        # (one block writes no partial results: it is handed targets, which it leaves alone)
        partial = targets if blocks == 1 else cp.empty(3 * blocks, np.int64)
        count = cp.empty((), np.int64)
        out = losses if reduction == "none" else cp.empty((), x.dtype)
    except MemoryError as error:
        raise out_of_memory(error, "cuda", "cross_entropy kernel") from error
    ignore = 0 if ignore_index is None else ignore_index
    finish = (np.int32(REDUCTIONS[reduction]), out, count, device_checks._buffer("cuda"), np.int64(check))
    threads = ONE_BLOCK_THREADS if blocks == 1 else _THREADS
    rows_kernel((blocks,), (threads,), (x, labels, np.int64(n), np.int64(c), np.int64(ignore),
                                         np.int32(ignore_index is not None), losses, stats, targets, partial,
                                         *finish, np.uint64(0) if grad is None else grad))
    if blocks > 1:
        total_kernel((1,), (_THREADS,), (partial, np.int32(blocks), labels, np.int64(n), *finish))
    return out, stats, targets, count, grad


def _gpu_grad(x: Any, stats: Any, targets: Any, count: Any, gy: Any, reduction: str, label_dtype: Any) -> Any:
    cp = cupy_module()
    n, c = x.shape
    _, _, grad32, grad64 = _gpu_kernels(x.dtype, label_dtype)  # forward's module
    try:
        gx = cp.empty((n, c), x.dtype)
    except MemoryError as error:
        raise out_of_memory(error, "cuda", "cross_entropy backward kernel") from error
    # 32-bit index arithmetic (a cheaper division) while i + the grid's stride cannot overflow
    small = n * c < 2**30
    index = np.int32 if small else np.int64
    blocks = min(_GRAD_BLOCKS, -(-(n * c) // _THREADS))
    (grad32 if small else grad64)((blocks,), (_THREADS,), (x, stats, targets, gy.astype(x.dtype, copy=False),
                                                           count, np.int32(REDUCTIONS[reduction]),
                                                           index(n), index(c), gx))
    return gx


from . import tensor as _tensor  # noqa: E402  (tensor.py's ops import this module)
