"""Finite-difference gradient checking, in float64."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import ops
from .backend import move
from .function import diagnosis
from .gradient_diagnosis import GradientReport, NodeFinding, _user_line, diagnose_gradients
from .tensor import Tensor


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its finite-difference estimate."""


def _tolerance(name: str, value: Any, allow_zero: bool = True) -> float:
    """A finite, non-negative (eps: positive) real setting as a float, or an error naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"gradcheck: {name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"gradcheck: {name} must be finite and {'at least 0' if allow_zero else 'above 0'}, "
                         f"got {value!r}")
    return number


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, locate: bool = False) -> bool:
    """Compare backward() with central differences for every input that requires grad.

    The inputs are copied to float64 first. A non-scalar output is reduced with a fixed random
    weighting, so every output element takes part. Returns True or raises GradcheckError; with
    locate=True its message also names the nodes whose own backward is wrong (diagnose_gradients).
    """
    eps = _tolerance("eps", eps, allow_zero=False)
    atol, rtol = _tolerance("atol", atol), _tolerance("rtol", rtol)
    inputs64 = [Tensor(t.numpy().astype(np.float64), device=t.device, requires_grad=t.requires_grad)
                if isinstance(t, Tensor) else t for t in inputs]
    checked = [i for i, t in enumerate(inputs64) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    out = fn(*inputs64)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    weights = np.random.default_rng(1234).uniform(0.5, 1.5, out.shape)
    out.backward(Tensor(weights, device=out.device, dtype=np.float64))

    def weighted_output() -> float:
        value = fn(*inputs64).numpy().astype(np.float64)
        return float(np.sum(value * weights))

    for index in checked:
        tensor = inputs64[index]
        analytic = (tensor.grad.numpy() if tensor.grad is not None else np.zeros(tensor.shape))
        original = tensor.numpy()
        numeric = np.zeros(tensor.shape)
        for element in np.ndindex(*tensor.shape):
            probe = original.copy()
            probe[element] += eps
            tensor.array[...] = Tensor(probe, device=tensor.device, dtype=np.float64).array
            plus = weighted_output()
            probe[element] -= 2 * eps
            tensor.array[...] = Tensor(probe, device=tensor.device, dtype=np.float64).array
            minus = weighted_output()
            numeric[element] = (plus - minus) / (2 * eps)
        tensor.array[...] = Tensor(original, device=tensor.device, dtype=np.float64).array
        bad = ~np.isclose(analytic, numeric, rtol=rtol, atol=atol)
        if bad.any():
            element = tuple(int(i) for i in np.argwhere(bad)[0])
            message = (f"gradcheck: input {index} (shape {tensor.shape}), element {element}: "
                       f"analytic {float(analytic[element])!r} != numeric {float(numeric[element])!r} "
                       f"(atol={atol}, rtol={rtol}; {int(bad.sum())} of {bad.size} elements differ)")
            if locate:
                message += "\n" + str(diagnose_gradients(fn, inputs, eps=eps, atol=atol, rtol=rtol))
            raise GradcheckError(message)
    return True


def gradgradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], grad_outputs: Any = None,
                  eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3, locate: bool = True) -> bool:
    """Compare second derivatives with central differences of the first (create_graph=True).

    The first gradients of `fn` w.r.t. its inputs that require grad, weighted by `grad_outputs`
    (a fixed random tensor of the output's shape when None), are themselves gradient-checked
    w.r.t. those inputs and the grad_outputs. Returns True or raises GradcheckError; with locate
    (the default) its message names the ops whose recorded backward is wrong.
    """
    eps = _tolerance("eps", eps, allow_zero=False)
    atol, rtol = _tolerance("atol", atol), _tolerance("rtol", rtol)
    inputs64 = [Tensor(t.numpy().astype(np.float64), device=t.device, requires_grad=t.requires_grad)
                if isinstance(t, Tensor) else t for t in inputs]
    if not any(isinstance(t, Tensor) and t.requires_grad for t in inputs64):
        raise ValueError("gradgradcheck: no input has requires_grad=True")
    out = fn(*inputs64)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradgradcheck: fn must return a Tensor, got {type(out).__name__}")
    if grad_outputs is None:
        weights = np.random.default_rng(4321).uniform(0.5, 1.5, out.shape)
        seed = Tensor(weights, device=out.device, dtype=np.float64, requires_grad=True)
    else:
        seed = grad_outputs if isinstance(grad_outputs, Tensor) else Tensor(grad_outputs, device=out.device)
        if seed.shape != out.shape:
            raise ValueError(f"gradgradcheck: grad_outputs has shape {seed.shape}, fn's output {out.shape}")
        seed = Tensor(seed.numpy().astype(np.float64), device=out.device, requires_grad=True)
    count = len(inputs64)

    def first_gradients(*args: Any) -> Tensor:
        return _flat_first_gradients(fn(*args[:count]), list(args[:count]), args[count])

    try:
        # the recorded first gradients must be backward()'s (which gradcheck checks), then their derivatives
        _check_recorded_first_gradients(fn, inputs64, seed, atol, rtol)
        return gradcheck(first_gradients, [*inputs64, seed], eps=eps, atol=atol, rtol=rtol)
    except GradcheckError as error:
        message = str(error)
        if message.startswith("gradcheck:"):  # from the check of the derivatives
            message = message.replace("gradcheck:", "gradgradcheck: the first gradients' derivative w.r.t.",
                                      1)
            message = message.replace(f"input {count} (", "grad_outputs (", 1)
        if locate:
            message += "\n" + str(diagnose_second_derivatives(fn, inputs, eps=eps, atol=atol, rtol=rtol))
        raise GradcheckError(message) from None


def _check_recorded_first_gradients(fn: Callable[..., Tensor], inputs: list, seed: Tensor, atol: float,
                                    rtol: float) -> None:
    """GradcheckError unless the gradients of fn recorded with create_graph equal plain backward()'s."""
    recorded = _flat_first_gradients(fn(*inputs), inputs, seed).numpy()
    fresh = [Tensor(t.numpy(), device=t.device, requires_grad=t.requires_grad) if isinstance(t, Tensor) else t
             for t in inputs]
    fn(*fresh).backward(seed.detach())
    expected = np.concatenate([t.grad.numpy().reshape(-1) for t in fresh
                               if isinstance(t, Tensor) and t.requires_grad and t.grad is not None])
    bad = ~np.isclose(recorded, expected, rtol=rtol, atol=atol) if recorded.shape == expected.shape else None
    if bad is None or bad.any():
        element = int(np.argmax(bad)) if bad is not None else 0
        raise GradcheckError(f"gradgradcheck: the gradients recorded with create_graph=True differ from "
                             f"backward()'s: element {element} of the inputs' gradients (flattened), "
                             f"{float(recorded.flat[element])!r} vs {float(expected.flat[element])!r}")


def _flat_first_gradients(out: Tensor, inputs: list, seed: Tensor) -> Tensor:
    """The gradients of `out` (weighted by seed) w.r.t. the inputs requiring grad, recorded, as one vector."""
    from .autograd import grad
    from .combine import cat

    wanted = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    grads = grad(out, wanted, seed, create_graph=True, allow_unused=True)
    pieces = [g.reshape(-1) for g in grads if g is not None]
    if not pieces:
        raise ValueError("gradgradcheck: fn's output does not depend on any input that requires grad")
    return cat(pieces) if len(pieces) > 1 else pieces[0]


def diagnose_second_derivatives(fn: Callable[..., Tensor], inputs: Sequence[Any], eps: float = 1e-6,
                                atol: float = 1e-5, rtol: float = 1e-3) -> GradientReport:
    """Check each node's recorded backward (create_graph=True) on the inputs that node saw in `fn`.

    Per node: its recorded gradients must equal its plain backward's, and their own derivatives
    (w.r.t. the node's inputs and incoming gradient) must match central differences.
    """
    inputs64 = [Tensor(t.numpy().astype(np.float64), device=t.device, requires_grad=t.requires_grad)
                if isinstance(t, Tensor) else t for t in inputs]
    records: list = []

    def record(node: Any, arrays: list, params: dict) -> None:
        host = [move(a, "cpu").astype(np.float64) if hasattr(a, "dtype") and a.dtype.kind == "f"
                else move(a, "cpu") if hasattr(a, "dtype") else a for a in arrays]
        records.append((node, host, dict(params), _user_line()))

    previous, diagnosis.recorder = diagnosis.recorder, record
    try:
        fn(*inputs64)
    finally:
        diagnosis.recorder = previous
    report = GradientReport(checked=0)
    for position, (node, arrays, params, where) in enumerate(records):
        if isinstance(node, ops.ToDevice):
            report.skipped.append(f"#{position} {node.name}")
            continue
        report.checked += 1
        try:
            problem, out_shape = _second_order_problem(type(node), arrays, params,
                                                       tuple(node.needs_input_grad), eps, atol, rtol)
        except Exception as error:  # e.g. settings holding GPU arrays: say so, keep checking the others
            report.checked -= 1
            report.skipped.append(f"#{position} {node.name} ({type(error).__name__} when re-run on the CPU)")
            continue
        if problem:
            shapes = [getattr(a, "shape", ()) for a in arrays]
            finding = NodeFinding(position, node.name, where, 0, tuple(shapes[0]) if shapes else (),
                                  out_shape)
            finding.error = problem
            report.findings.append(finding)
    return report


def _second_order_problem(cls: type, arrays: list, params: dict, needs: tuple, eps: float, atol: float,
                          rtol: float) -> tuple[str, tuple]:
    """What is wrong with one node's recorded backward ("" when nothing), checked on the CPU, and
    the node's output shape."""
    checked = [i for i, (a, n) in enumerate(zip(arrays, needs)) if n and isinstance(a, np.ndarray)]
    if not checked:
        return "", ()

    def node_output(*tensors: Tensor) -> Tensor:
        args = list(arrays)
        for i, t in zip(checked, tensors):
            args[i] = t
        return cls.apply(*args, **params)

    leaves = [Tensor(arrays[i], requires_grad=True) for i in checked]
    out = node_output(*leaves)
    seed = Tensor(np.random.default_rng(99).uniform(0.5, 1.5, out.shape), requires_grad=True)
    recorded = _flat_first_gradients(out, leaves, seed).numpy()
    plain = node_output(*leaves)
    plain.backward(Tensor(seed.numpy()))
    expected = np.concatenate([t.grad.numpy().reshape(-1) for t in leaves])
    if not np.allclose(recorded, expected, rtol=rtol, atol=atol):
        bad = int(np.argmax(np.abs(recorded - expected)))
        return (f"its recorded gradient (create_graph=True) differs from its backward: element {bad} of "
                f"the inputs' gradients, {float(recorded[bad])!r} vs {float(expected[bad])!r}", out.shape)
    count = len(leaves)
    try:
        gradcheck(lambda *args: _flat_first_gradients(node_output(*args[:count]), list(args[:count]),
                                                      args[count]),
                  [*leaves, seed], eps=eps, atol=atol, rtol=rtol)
    except GradcheckError as error:
        return ("its recorded gradient's own derivative is wrong: " + str(error).replace("gradcheck: ", ""),
                out.shape)
    return "", out.shape
