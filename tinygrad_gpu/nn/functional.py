"""Losses and activations as functions (tg.nn.functional), composed from Tensor ops."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .. import indexing, losses, norms, ops, windows
from .. import kernels as K
from ..backend import array_module
from ..combine import stack
from ..convolution import Convolution
from ..fusion import fuse
from ..tensor import Tensor, _real, random_generator

_REDUCTIONS = ("mean", "sum", "none")


def _one_error_state(fn: Any) -> Any:
    """`fn` run with NumPy's floating-point warnings off for its whole body (as a module's forward is):
    one error state for a loss's dozen CPU kernels, not one per kernel."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if K.quiet.depth:
            return fn(*args, **kwargs)
        with K.silenced_numpy():
            return fn(*args, **kwargs)
    return run


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


# one fused node each: the elementwise chain and its sum run as one kernel each way where they can
_squared_error = {"mean": fuse(lambda input, target: ((input - target) ** 2).mean()),
                  "sum": fuse(lambda input, target: ((input - target) ** 2).sum()),
                  "none": fuse(lambda input, target: (input - target) ** 2)}


def _check_reduction(name: str, reduction: str) -> None:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _target_like(name: str, input: Tensor, target: Any) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    if not isinstance(target, Tensor):
        target = Tensor(target, device=input.device, dtype=input.dtype)
    if input.array.shape != target.array.shape:
        raise ValueError(f"{name}: input shape {input.shape} and target shape {target.shape} differ; "
                         "reshape one so they match")
    return target


def mse_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error between input and target, which must have the same shape."""
    fused = _squared_error.get(reduction) if isinstance(reduction, str) else None
    if fused is None:
        _check_reduction("mse_loss", reduction)
    return fused(input, _target_like("mse_loss", input, target))


def relu(x: Tensor) -> Tensor:
    """max(x, 0)."""
    return x.relu()


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x))."""
    return x.sigmoid()


def tanh(x: Tensor) -> Tensor:
    """tanh(x)."""
    return x.tanh()


# ---- classification ---------------------------------------------------------------------------
def softmax(x: Tensor, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """exp(x) / sum(exp(x)) along dim (or axis; the last by default), stable for large inputs."""
    return x.softmax(dim, axis=axis)


def log_softmax(x: Tensor, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """log(softmax(x)) along dim (or axis; the last by default), stably (no log of an underflowed 0)."""
    return x.log_softmax(dim, axis=axis)


def _class_rows(input: Tensor) -> tuple[Tensor, int, tuple]:
    """input as (rows, C) with the class axis last, the class count, and the per-row target shape."""
    class_axis = 0 if input.ndim == 1 else 1
    n_classes = input.shape[class_axis]
    target_shape = input.shape[:class_axis] + input.shape[class_axis + 1:]
    if input.ndim > 2:  # classes last, then one row per labelled position
        input = input.transpose(*((0,) + tuple(range(2, input.ndim)) + (1,)))
    elif input.ndim == 2:  # (N, C): the rows already
        return input, n_classes, target_shape
    return input.reshape(-1, n_classes), n_classes, target_shape


def _class_weights(name: str, weight: Any, n_classes: int, like: Tensor) -> Tensor | None:
    if weight is None:
        return None
    weight = _operand_like(like, weight)
    if weight.shape != (n_classes,):
        raise ValueError(f"{name}: weight must have one value per class, shape ({n_classes},), "
                         f"got {weight.shape}")
    return weight.detach()


@_one_error_state
def nll_loss(log_probs: Tensor, target: Any, reduction: str = "mean", weight: Any = None,
             ignore_index: int = -100) -> Tensor:
    """Negative log-likelihood of integer class labels, given log-probabilities.

    log_probs has shape (N, C), (C,) or (N, C, d1, ...); target holds labels in [0, C) with shape
    (N,), () or (N, d1, ...): a list, an integer array, or an integer Tensor. Labels equal to
    ignore_index count for nothing; weight (C,) scales each class, and "mean" divides by the
    summed weights of the counted labels (PyTorch's definition). Labels held on the GPU are
    range-checked on the device: a bad one raises at the next read back to the host.
    """
    _check_reduction("nll_loss", reduction)
    if not isinstance(log_probs, Tensor):
        raise TypeError(f"nll_loss: input must be a Tensor, got {type(log_probs).__name__}")
    if log_probs.ndim == 0:
        raise ValueError("nll_loss: input must have a class dimension, got a 0-d tensor")
    rows, n_classes, target_shape = _class_rows(log_probs)
    where = f"nll_loss (input shape {log_probs.shape}, dtype {log_probs.dtype})"
    labels, counted = indexing.class_labels(target, n_classes, target_shape, log_probs.device, where,
                                            ignore_index)
    weight = _class_weights("nll_loss", weight, n_classes, log_probs)
    flat = labels.reshape(-1)
    key = (indexing.arange(flat.shape[0], log_probs.device), flat)
    picked = ops.Index.apply(rows, key=key, advanced=True).reshape(target_shape)
    if weight is None and counted is None:
        return _reduce(-picked, reduction)
    scale = _label_weights(weight, labels, counted, log_probs)
    losses = -picked * scale
    if reduction == "mean":  # weighted mean: 0 / 0 = NaN when every label is ignored, as in PyTorch
        return losses.sum() / scale.sum()
    return _reduce(losses, reduction)


def _label_weights(weight: Tensor | None, labels: Any, counted: Any, like: Tensor) -> Tensor:
    """Per label: its class weight (1 without weights), 0 where the label is ignored (a constant)."""
    xp = array_module(like.device)
    scale = weight.array[labels] if weight is not None else xp.ones(labels.shape, like.dtype)
    if counted is not None:
        scale = scale * counted.astype(like.dtype)
    return Tensor._from_array(scale)


@_one_error_state
def cross_entropy(input: Tensor, target: Any, reduction: str = "mean", weight: Any = None,
                  ignore_index: int = -100, label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of logits (class axis 1, or 0 for a 1-d input) against integer labels or,
    when target has the input's shape and a float dtype, class probabilities; with PyTorch's
    weight, ignore_index and label_smoothing."""
    _check_reduction("cross_entropy", reduction)
    if not isinstance(input, Tensor):
        raise TypeError(f"cross_entropy: input must be a Tensor of logits, got {type(input).__name__}")
    if input.ndim == 0:
        raise ValueError("cross_entropy: input must have a class dimension, got a 0-d tensor")
    smoothing = _real(label_smoothing, "cross_entropy: label_smoothing")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {smoothing}")
    if weight is None and smoothing == 0.0:  # the common case: one fused primitive (losses.py)
        labels = losses.fused_labels(input, target, ignore_index)
        if labels is not None:
            return losses.cross_entropy(input, labels, reduction, ignore_index)
    log_probs = input.log_softmax(axis=0 if input.ndim == 1 else 1)
    target_array = getattr(target, "array", target)
    probabilities = (getattr(target_array, "shape", None) == input.shape
                     and getattr(target_array, "dtype", np.dtype(np.int64)).kind == "f")
    if probabilities:
        return _soft_cross_entropy(log_probs, _operand_like(input, target).detach(), reduction, weight,
                                   smoothing)
    loss = nll_loss(log_probs, target, reduction, weight, ignore_index)
    if smoothing == 0.0:
        return loss
    # the smoothing term: -sum_c w_c log p_c per label (ignored labels count for nothing)
    rows, n_classes, target_shape = _class_rows(log_probs)
    weights = _class_weights("cross_entropy", weight, n_classes, input)
    smooth = -(rows * weights if weights is not None else rows).sum(axis=1).reshape(target_shape)
    where = f"cross_entropy (input shape {input.shape})"
    labels, counted = indexing.class_labels(target, n_classes, target_shape, input.device, where,
                                            ignore_index)
    if counted is not None:
        smooth = smooth * Tensor._from_array(counted.astype(input.dtype))
    if reduction == "mean":
        smooth = smooth.sum() / _label_weights(weights, labels, counted, input).sum()
    else:
        smooth = _reduce(smooth, reduction)
    return loss * (1.0 - smoothing) + smooth * (smoothing / n_classes)


def _soft_cross_entropy(log_probs: Tensor, target: Tensor, reduction: str, weight: Any,
                        smoothing: float) -> Tensor:
    """-sum_c w_c t_c log p_c per sample for probability targets t (smoothed towards uniform)."""
    rows, n_classes, target_shape = _class_rows(log_probs)
    probabilities, _, _ = _class_rows(target)
    if smoothing:
        probabilities = probabilities * (1.0 - smoothing) + smoothing / n_classes
    weights = _class_weights("cross_entropy", weight, n_classes, log_probs)
    if weights is not None:
        probabilities = probabilities * weights
    losses = -(rows * probabilities).sum(axis=1).reshape(target_shape)
    return _reduce(losses, reduction)


@_one_error_state
def binary_cross_entropy(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """-(t log p + (1 - t) log(1 - p)) for probabilities p in [0, 1]; each log is clamped at -100."""
    _check_reduction("binary_cross_entropy", reduction)
    target = _target_like("binary_cross_entropy", input, target)
    return _reduce(ops.BinaryCrossEntropy.apply(input, target), reduction)


@_one_error_state
def binary_cross_entropy_with_logits(input: Tensor, target: Any, reduction: str = "mean", weight: Any = None,
                                     pos_weight: Any = None) -> Tensor:
    """Binary cross-entropy of sigmoid(input), in the stable form max(x, 0) - x t + log(1 + exp(-|x|));
    pos_weight multiplies the positive term (one value per class, broadcast), weight every element."""
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    target = _target_like("binary_cross_entropy_with_logits", input, target)
    if pos_weight is None:
        values = ops.BinaryCrossEntropyWithLogits.apply(input, target)
    else:  # PyTorch's form: (1 - t) x + (1 + (pw - 1) t) softplus(-x)
        pos_weight = _operand_like(input, pos_weight)
        values = (1.0 - target) * input + (1.0 + (pos_weight - 1.0) * target) * softplus(-input)
    if weight is not None:
        values = values * _operand_like(input, weight)
    return _reduce(values, reduction)


def _operand_like(input: Tensor, value: Any) -> Tensor:
    """A per-element or per-class setting as a tensor on input's device and dtype."""
    return value if isinstance(value, Tensor) else Tensor(value, device=input.device, dtype=input.dtype)


# ---- more activations: one kernel row each, forward and backward ---------------------------------
def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x where x > 0, else negative_slope * x."""
    return ops.LeakyReLU.apply(x, slope=_real(negative_slope, "leaky_relu: negative_slope"))


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x where x > 0, else alpha * (exp(x) - 1)."""
    return ops.ELU.apply(x, alpha=_real(alpha, "elu: alpha"))


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x) (also called swish)."""
    return ops.SiLU.apply(x)


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold."""
    beta = _real(beta, "softplus: beta")
    if beta == 0:
        raise ValueError("softplus: beta must not be 0")
    return ops.Softplus.apply(x, beta=beta, threshold=_real(threshold, "softplus: threshold"))


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x) with Phi the normal CDF (approximate="none"), or its tanh approximation ("tanh")."""
    if approximate == "none":
        return ops.GELU.apply(x)
    if approximate == "tanh":
        return ops.GELUTanh.apply(x)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


# ---- convolution and pooling: windows (im2col) then a matrix product or a reduction --------------
def _image_batch(name: str, x: Any, ndim: int = 4) -> tuple[Tensor, bool]:
    """x as an (N, C, H, W) tensor, and whether it came without its batch axis (C, H, W)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(x).__name__}")
    if x.ndim == ndim - 1:
        return x.reshape(1, *x.shape), True
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d input (N, C, H, W) or {ndim - 1}-d (C, H, W), "
                         f"got shape {x.shape}")
    return x, False


def _check_windows(name: str, shape: tuple, kernel: tuple, stride: tuple, padding: tuple,
                   dilation: tuple) -> None:
    for axis, size in zip(("height", "width"), shape[2:]):
        i = 0 if axis == "height" else 1
        if windows.output_size(size, kernel[i], stride[i], padding[i], dilation[i]) < 1:
            raise ValueError(f"{name}: input of shape {shape} is too small along its {axis} for kernel "
                             f"{kernel}, padding {padding} and dilation {dilation}")


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Tensor:
    """2-D cross-correlation of (N, C, H, W) input with (O, C/groups, kh, kw) weight, as PyTorch's conv2d.

    The windows are unfolded once (im2col) into a (C·kh·kw, N·OH·OW) matrix, so the product is one
    matrix multiplication (per group) each way; with groups=1 all of it is one graph node
    (convolution.Convolution).
    """
    return _conv2d(input, weight, bias, stride, padding, dilation, groups)


def _conv2d(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any,
            groups: int, relu: bool = False) -> Tensor:
    """conv2d, then ReLU when `relu` is set (in the same node where groups=1: what a Sequential of
    Conv2d and ReLU runs)."""
    x, unbatched = _image_batch("conv2d", input)
    if not isinstance(weight, Tensor) or weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be a 4-d Tensor (out, in/groups, kh, kw), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    out_channels, group_channels, kh, kw = weight.shape
    n, channels, height, width = x.shape
    if channels != group_channels * groups or out_channels % groups:
        raise ValueError(f"conv2d: input has {channels} channels and weight shape {weight.shape} with "
                         f"groups={groups}: expected {group_channels * groups} input channels and "
                         f"out channels divisible by groups")
    stride = windows.pair(stride, "conv2d: stride", 1)
    dilation = windows.pair(dilation, "conv2d: dilation", 1)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        if stride != (1, 1):
            raise ValueError("conv2d: padding='same' needs stride 1")
        total = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
        if total[0] % 2 or total[1] % 2:  # PyTorch pads unevenly here; one Pad node first
            x = windows.Pad.apply(x, pads=((total[0] // 2, total[0] - total[0] // 2),
                                           (total[1] // 2, total[1] - total[1] // 2)))
            padding = (0, 0)
        else:
            padding = (total[0] // 2, total[1] // 2)
    padding = windows.pair(padding, "conv2d: padding", 0)
    _check_windows("conv2d", x.shape, (kh, kw), stride, padding, dilation)
    if groups == 1:  # one node (the composition below, run inside it)
        with_bias = () if bias is None else (bias,)
        out = Convolution.apply(x, weight, *with_bias, stride=stride, padding=padding, dilation=dilation,
                                relu=relu)
        return out.reshape(out.shape[1:]) if unbatched else out
    columns = windows.Unfold.apply(x, kernel=(kh, kw), stride=stride, padding=padding, dilation=dilation)
    _, _, _, _, oh, ow = columns.shape  # (C, kh, kw, N, OH, OW)
    out = (weight.reshape(groups, out_channels // groups, -1)
           @ columns.reshape(groups, group_channels * kh * kw, -1))
    if bias is not None:  # per channel, while each channel's outputs are one contiguous row
        out = out.reshape(out_channels, -1) + bias.reshape(out_channels, 1)
    out = out.reshape(out_channels, n, oh, ow).transpose(1, 0, 2, 3)
    if relu:
        out = out.relu()
    return out.reshape(out.shape[1:]) if unbatched else out


def _pool_settings(name: str, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                   ceil_mode: bool) -> tuple:
    if ceil_mode:
        raise ValueError(f"{name}: ceil_mode=True is not supported; pad the input instead")
    kernel = windows.pair(kernel_size, f"{name}: kernel_size", 1)
    stride = kernel if stride is None or stride == [] else windows.pair(stride, f"{name}: stride", 1)
    padding = windows.pair(padding, f"{name}: padding", 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel size {kernel}")
    return kernel, stride, padding, windows.pair(dilation, f"{name}: dilation", 1)


def _pooled(x: Tensor, columns: Tensor, reduce: Any, unbatched: bool) -> Tensor:
    """(C, kh, kw, N, OH, OW) windows reduced over the window axes, back in (N, C, OH, OW)."""
    c, kh, kw, n, oh, ow = columns.shape
    out = reduce(columns.reshape(c, kh * kw, n, oh, ow)).transpose(1, 0, 2, 3)
    return out.reshape(out.shape[1:]) if unbatched else out


def max_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False) -> Tensor:
    """The maximum of each window; its gradient goes to the first maximal element (as PyTorch's)."""
    x, unbatched = _image_batch("max_pool2d", input)
    kernel, stride, padding, dilation = _pool_settings("max_pool2d", kernel_size, stride, padding,
                                                       dilation, ceil_mode)
    _check_windows("max_pool2d", x.shape, kernel, stride, padding, dilation)
    out = windows.MaxPool.apply(x, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    return out.reshape(out.shape[1:]) if unbatched else out


def avg_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """The mean of each window (zero padding counted unless count_include_pad=False)."""
    x, unbatched = _image_batch("avg_pool2d", input)
    kernel, stride, padding, dilation = _pool_settings("avg_pool2d", kernel_size, stride, padding, 1,
                                                       ceil_mode)
    _check_windows("avg_pool2d", x.shape, kernel, stride, padding, dilation)
    columns = windows.Unfold.apply(x, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    if divisor_override is not None:
        if not isinstance(divisor_override, int) or divisor_override <= 0:
            raise ValueError(f"avg_pool2d: divisor_override must be a positive int, got {divisor_override!r}")
        return _pooled(x, columns, lambda c: c.sum(axis=1) * (1.0 / divisor_override), unbatched)
    if count_include_pad or padding == (0, 0):
        return _pooled(x, columns, lambda c: c.mean(axis=1), unbatched)
    # divide each window by how many of its elements lie inside the input (a constant)
    ones = Tensor._from_array(array_module(x.device).ones((1, 1) + x.shape[2:], x.dtype))
    counts = windows.Unfold.apply(ones, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    counts = counts.reshape(1, kernel[0] * kernel[1], 1, *counts.shape[4:]).sum(axis=1)
    return _pooled(x, columns, lambda c: c.sum(axis=1) / counts, unbatched)


def adaptive_avg_pool2d(input: Tensor, output_size: Any) -> Tensor:
    """Average pooling to a fixed output size: cell i spans [floor(i·H/oh), ceil((i+1)·H/oh))."""
    x, unbatched = _image_batch("adaptive_avg_pool2d", input)
    height, width = x.shape[2:]
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(sizes) != 2:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}")
    oh, ow = (height if sizes[0] is None else sizes[0]), (width if sizes[1] is None else sizes[1])
    oh, ow = windows.pair((oh, ow), "adaptive_avg_pool2d: output_size", 1)
    if height % oh == 0 and width % ow == 0:  # equal cells: one reshape and one mean
        out = x.reshape(x.shape[0], x.shape[1], oh, height // oh, ow, width // ow).mean(axis=(3, 5))
    else:
        rows = []
        for i in range(oh):
            top, bottom = (i * height) // oh, -((-(i + 1) * height) // oh)
            cells = [x[:, :, top:bottom, (j * width) // ow:-((-(j + 1) * width) // ow)].mean(axis=(2, 3))
                     for j in range(ow)]
            rows.append(stack(cells, axis=-1))
        out = stack(rows, axis=-2)
    return out.reshape(out.shape[1:]) if unbatched else out


def pad(input: Tensor, pad: Any, mode: str = "constant", value: float = 0.0) -> Tensor:
    """Constant padding; `pad` lists (before, after) sizes from the last axis backwards, as PyTorch's."""
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is supported, got {mode!r}")
    sizes = tuple(pad)
    if len(sizes) % 2 or len(sizes) // 2 > input.ndim or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in sizes):
        raise ValueError(f"pad: expected an even number (at most {2 * input.ndim}) of non-negative ints, "
                         f"got {pad!r}")
    pairs = tuple((sizes[2 * i], sizes[2 * i + 1]) for i in range(len(sizes) // 2))[::-1]
    return windows.Pad.apply(input, pads=pairs, value=_real(value, "pad: value"))


# ---- normalisation and dropout ---------------------------------------------------------------------
def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float | None = 0.1, eps: float = 1e-5, num_batches_tracked: Tensor | None = None
               ) -> Tensor:
    """Normalise over every axis but the channel axis 1, with batch statistics (training) or the
    running ones (eval); in training the running statistics are updated in place on the device."""
    if not isinstance(input, Tensor) or input.ndim < 2:
        raise ValueError(f"batch_norm: expected an input of shape (N, C, ...), got "
                         f"{getattr(input, 'shape', type(input).__name__)}")
    channels = input.shape[1]
    axes = (0,) + tuple(range(2, input.ndim))
    kept = (1, channels) + (1,) * (input.ndim - 2)
    if training:
        count = input.size // channels
        if count <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                             f"got input of shape {input.shape}")
        mean = input.mean(axis=axes, keepdims=True)
        centered = input - mean
        var = (centered * centered).mean(axis=axes, keepdims=True)
        if running_mean is not None and running_var is not None:
            _update_running_stats(running_mean, running_var, mean, var, count, momentum, num_batches_tracked)
        out = centered / (var + eps).sqrt()
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: eval mode needs running_mean and running_var")
        out = (input - running_mean.reshape(kept)) / (running_var.reshape(kept) + eps).sqrt()
    if weight is not None:
        out = out * weight.reshape(kept)
    if bias is not None:
        out = out + bias.reshape(kept)
    return out


def _update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count: int,
                          momentum: float | None, num_batches_tracked: Tensor | None) -> None:
    """running += m (batch - running) in place, on the device (the variance unbiased);
    m = momentum, or 1 / batches seen (a cumulative average) when momentum is None."""
    if num_batches_tracked is not None:
        num_batches_tracked.array += 1
        num_batches_tracked._bump_version()
    if momentum is None:
        if num_batches_tracked is None:
            raise ValueError("batch_norm: momentum=None (a cumulative average) needs num_batches_tracked")
        factor = 1.0 / num_batches_tracked.array.astype(running_mean.dtype)  # stays on the device
    else:
        factor = float(momentum)
    unbiased = var.array.reshape(-1) * (count / (count - 1))
    for running, batch in ((running_mean, mean.array.reshape(-1)), (running_var, unbiased)):
        running.array += (batch.astype(running.dtype, copy=False) - running.array) * factor
        running._bump_version()


def layer_norm(input: Tensor, normalized_shape: Any, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Normalise over the last len(normalized_shape) axes, then scale and shift elementwise (one
    primitive, norms.LayerNorm: on the GPU one launch forward, reading the input once)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if input.shape[input.ndim - len(shape):] != shape or len(shape) > input.ndim:
        raise ValueError(f"layer_norm: normalized_shape {shape} does not match the last axes of input "
                         f"shape {input.shape}")
    # one primitive over (rows, n): the normalised axes flattened into one row each
    n = math.prod(shape)
    rows = math.prod(input.shape[:input.ndim - len(shape)])
    # a weight and bias of exactly normalized_shape go into the kernel; anything else (a number, a
    # tensor that broadcasts) is applied afterwards, as ordinary ops
    fused_weight = isinstance(weight, Tensor) and weight.shape == shape
    fused_bias = isinstance(bias, Tensor) and bias.shape == shape and (weight is None or fused_weight)
    out = norms.LayerNorm.apply(input._floating().reshape(rows, n),
                                weight.reshape(n) if fused_weight else None,
                                bias.reshape(n) if fused_bias else None, eps=float(eps))
    out = out.reshape(input.shape)
    if weight is not None and not fused_weight:
        out = out * weight
    if bias is not None and not fused_bias:
        out = out + bias
    return out


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (identity unless training).

    The mask is drawn from the generator tg.manual_seed seeds, so runs repeat on every device.
    """
    p = _real(p, "dropout: p")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    keep = random_generator().random(input.shape) >= p
    mask = Tensor(keep.astype(input.dtype) * (1.0 / (1.0 - p)), device=input.device, dtype=input.dtype)
    return input * mask


# ---- more losses, composed -------------------------------------------------------------------------
@_one_error_state
def l1_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """|input - target|, reduced."""
    _check_reduction("l1_loss", reduction)
    return _reduce((input - _target_like("l1_loss", input, target)).abs(), reduction)


@_one_error_state
def huber_loss(input: Tensor, target: Any, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """0.5 d² where |d| < delta, else delta (|d| - 0.5 delta), d = input - target.

    Written as 0.5 c² + delta (|d| - c) with c = min(|d|, delta): no mask, one expression.
    """
    _check_reduction("huber_loss", reduction)
    delta = _real(delta, "huber_loss: delta")
    if not delta > 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    size = (input - _target_like("huber_loss", input, target)).abs()
    inner = size.clip(max=delta)
    return _reduce(0.5 * inner * inner + delta * (size - inner), reduction)


@_one_error_state
def smooth_l1_loss(input: Tensor, target: Any, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """Huber's loss divided by beta (beta = 0 is the L1 loss), as PyTorch's smooth_l1_loss."""
    _check_reduction("smooth_l1_loss", reduction)
    beta = _real(beta, "smooth_l1_loss: beta")
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    if beta == 0:
        return l1_loss(input, target, reduction)
    return huber_loss(input, target, reduction, delta=beta) * (1.0 / beta)


@_one_error_state
def kl_div(input: Tensor, target: Any, reduction: str = "mean", log_target: bool = False) -> Tensor:
    """KL divergence of log-probabilities `input` from `target`: target · (log target - input)."""
    if reduction not in (*_REDUCTIONS, "batchmean"):
        raise ValueError(f"kl_div: reduction must be one of {(*_REDUCTIONS, 'batchmean')}, got {reduction!r}")
    target = _target_like("kl_div", input, target)
    if log_target:
        pointwise = target.exp() * (target - input)
    else:  # 0 · log 0 is 0 (a clipped log keeps it finite, as xlogy does)
        tiny = float(np.finfo(input.dtype).tiny)
        pointwise = target * (target.clip(min=tiny).log() - input)
    if reduction == "batchmean":
        return pointwise.sum() * (1.0 / (input.shape[0] if input.ndim else 1))
    return _reduce(pointwise, reduction)


def embedding(input: Any, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """weight[input] for integer indices of any shape; rows looked up at padding_idx get no gradient."""
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise ValueError(f"embedding: weight must be a 2-d Tensor, got {getattr(weight, 'shape', weight)!r}")
    rows = weight[input]
    if padding_idx is None or not weight.requires_grad:
        return rows
    indices = input.array if isinstance(input, Tensor) else np.asarray(input)
    keep = Tensor(indices != padding_idx, device=weight.device, dtype=weight.dtype)
    # the padding rows' values are kept as they are, their gradient is cut
    return rows * keep.reshape(*keep.shape, 1) + (rows * (1.0 - keep.reshape(*keep.shape, 1))).detach()
