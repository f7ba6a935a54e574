"""tg.fuse: run a chain of elementwise ops as one generated kernel, forward and backward.

The chain is recorded once per input shape by running the function eagerly. Each recorded op is
an ElementwiseOp, i.e. one kernel row forward and one row (or a pass-through) per input backward,
so the fused forward is the rows' bodies concatenated with renamed variables, and the fused
backward recomputes those values and applies the gradient rows in reverse order. Both become an
ordinary kernel row (CUDA body plus NumPy twin built from the rows' own twins), so the same
dispatch, streaming launches and twin discipline apply. Layers stay compositions of tensor ops:
fusion only changes how many kernels they launch.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from . import kernels as K
from .function import Function, no_grad, recording
from .tensor import Tensor

_serial = itertools.count()  # generated rows get distinct names: kernel caches are keyed by name


class _Program:
    """A traced chain: steps of (op class, operand refs); a ref is ("in", k), ("v", step) or ("c", value)."""

    def __init__(self, steps: list, output: int, n_inputs: int, label: str) -> None:
        self.steps, self.output, self.n_inputs, self.label = steps, output, n_inputs, label
        self.forward_row = self._build_forward()
        self._backward_rows: dict[tuple, K.Elementwise] = {}

    # ---- CUDA source ------------------------------------------------------------------------
    @staticmethod
    def _operand(ref: tuple) -> str:
        kind, value = ref
        if kind == "c":
            return f"(T)({float(value)!r})"
        return f"in{value}" if kind == "in" else f"v{value}"

    def _step_source(self, index: int) -> str:
        """`T v<index>;` computed from its operands by the op's forward row."""
        cls, refs = self.steps[index]
        row = cls.row
        names = K.param_names(row.in_params)
        binds = "".join(f"T {n} = {self._operand(r)}; " for n, r in zip(names, refs))
        out = K.param_names(row.out_params)[0]
        return f"T v{index}; {{ {binds}T {out}; {{ {row.body}; }} v{index} = {out}; }}\n"

    def _build_forward(self) -> K.Elementwise:
        inputs = ", ".join(f"T in{k}" for k in range(self.n_inputs))
        body = "".join(self._step_source(i) for i in range(len(self.steps))) + f"out = v{self.output};"
        return K.Elementwise(f"fused{next(_serial)}_{self.label}", inputs, "T out", body,
                             self._forward_twin, register=False)

    def backward_row(self, needed: tuple[bool, ...]) -> K.Elementwise:
        """The row computing d(out)/d(in_k) * gy for every input k with needed[k]."""
        row = self._backward_rows.get(needed)
        if row is None:
            row = self._backward_rows[needed] = self._build_backward(needed)
        return row

    def _build_backward(self, needed: tuple[bool, ...]) -> K.Elementwise:
        lines = [self._step_source(i) for i in range(len(self.steps))]
        lines += [f"T g_v{i} = (T)0; " for i in range(len(self.steps))]
        lines += [f"T g_in{k} = (T)0; " for k in range(self.n_inputs)]
        lines.append(f"g_v{self.output} = gy;\n")
        for index in reversed(range(len(self.steps))):
            cls, refs = self.steps[index]
            names = K.param_names(cls.row.in_params)
            for rule, ref in zip(cls.grads, refs):
                if ref[0] == "c" or rule is None:
                    continue
                target = f"g_in{ref[1]}" if ref[0] == "in" else f"g_v{ref[1]}"
                if rule == "gy":
                    lines.append(f"{target} += g_v{index};\n")
                    continue
                grad_row, arg_names = rule
                # the rule names values (forward inputs, "y", "gy"); the row's body uses its own
                # parameter names, bound here to those values
                value_of = {n: self._operand(r) for n, r in zip(names, refs)}
                value_of["y"], value_of["gy"] = f"v{index}", f"g_v{index}"
                binds = "".join(f"T {param} = {value_of[n]}; "
                                for param, n in zip(K.param_names(grad_row.in_params), arg_names))
                out = K.param_names(grad_row.out_params)[0]
                lines.append(f"{{ T tg_r; {{ {binds}T {out}; {{ {grad_row.body}; }} tg_r = {out}; }} "
                             f"{target} += tg_r; }}\n")
        outputs = [k for k in range(self.n_inputs) if needed[k]]
        lines += [f"gx{k} = g_in{k};" for k in outputs]
        inputs = ", ".join([f"T in{k}" for k in range(self.n_inputs)] + ["T gy"])
        return K.Elementwise(f"fused{next(_serial)}_{self.label}_bwd", inputs,
                             ", ".join(f"T gx{k}" for k in outputs),
                             "".join(lines), functools.partial(self._backward_twin, outputs),
                             register=False)

    # ---- NumPy twins: the same steps through the rows' own twins, as straight-line Python ------
    def _operand_py(self, ref: tuple) -> str:
        kind, value = ref
        return repr(float(value)) if kind == "c" else (f"in{value}" if kind == "in" else f"v{value}")

    def _compile(self, name: str, params: list[str], lines: list[str], result: str) -> Any:
        namespace = {f"twin{i}": cls.row.twin for i, (cls, _) in enumerate(self.steps)}
        for i, (cls, _) in enumerate(self.steps):
            for j, rule in enumerate(cls.grads):
                if isinstance(rule, tuple):
                    namespace[f"grad{i}_{j}"] = rule[0].twin
        namespace["np"] = np
        source = f"def {name}({', '.join(params)}):\n" + "".join(f"    {line}\n" for line in lines)
        source += f"    return {result}\n"
        exec(compile(source, f"<fused {self.label}>", "exec"), namespace)
        return namespace[name]

    def _value_lines(self) -> list[str]:
        return [f"v{i} = twin{i}({', '.join(self._operand_py(r) for r in refs)})"
                for i, (_, refs) in enumerate(self.steps)]

    @functools.cached_property
    def values_twin(self) -> Any:
        """inputs -> every step's value (the CPU forward keeps them for backward)."""
        inputs = [f"in{k}" for k in range(self.n_inputs)]
        values = ", ".join(f"v{i}" for i in range(len(self.steps)))
        return self._compile("values", inputs, self._value_lines(), f"({values},)")

    def _forward_twin(self, *inputs: Any) -> Any:
        return self.values_twin(*inputs)[self.output]

    def gradient_twin(self, needed: tuple[bool, ...]) -> Any:
        """(inputs, values, gy) -> the needed input gradients, each in the full broadcast shape."""
        key = ("twin",) + needed
        if key not in self._backward_rows:
            self._backward_rows[key] = self._compile_gradient(needed)
        return self._backward_rows[key]

    def _compile_gradient(self, needed: tuple[bool, ...]) -> Any:
        lines = [f"v{i}, " for i in range(len(self.steps))]
        lines = [f"({''.join(lines)}) = values"]
        assigned: set[str] = set()

        def accumulate(target: str, expression: str) -> None:
            lines.append(f"{target} = {target} + {expression}" if target in assigned
                         else f"{target} = {expression}")
            assigned.add(target)

        accumulate(f"g_v{self.output}", "gy")
        for index in reversed(range(len(self.steps))):
            cls, refs = self.steps[index]
            if f"g_v{index}" not in assigned:
                continue  # nothing flows back through this step
            names = K.param_names(cls.row.in_params)
            for j, (rule, ref) in enumerate(zip(cls.grads, refs)):
                if ref[0] == "c" or rule is None or (ref[0] == "in" and not needed[ref[1]]):
                    continue
                target = f"g_in{ref[1]}" if ref[0] == "in" else f"g_v{ref[1]}"
                if rule == "gy":
                    accumulate(target, f"g_v{index}")
                    continue
                bound = dict(zip(names, (self._operand_py(r) for r in refs)))
                bound["y"], bound["gy"] = f"v{index}", f"g_v{index}"
                accumulate(target, f"grad{index}_{j}({', '.join(bound[n] for n in rule[1])})")
        outputs = []
        for k in range(self.n_inputs):
            if needed[k]:
                grad = f"g_in{k}" if f"g_in{k}" in assigned else "0"
                outputs.append(f"_full({grad}, gy, shape)")
        params = [f"in{k}" for k in range(self.n_inputs)] + ["values", "gy", "shape"]
        function = self._compile("gradients", params, lines, f"({', '.join(outputs)},)")
        function.__globals__["_full"] = _full
        return function

    def _backward_twin(self, outputs: list[int], *args: Any) -> Any:
        inputs, gy = args[:-1], args[-1]
        needed = tuple(k in outputs for k in range(self.n_inputs))
        shape = np.broadcast_shapes(*(np.shape(a) for a in args))
        results = self.gradient_twin(needed)(*inputs, self.values_twin(*inputs), gy, shape)
        return results[0] if len(results) == 1 else results


def _full(grad: Any, gy: Any, shape: tuple) -> Any:
    """A gradient as an array of the full broadcast shape (as the GPU kernel writes it)."""
    grad = np.asarray(grad, gy.dtype)
    return grad if grad.shape == shape else np.broadcast_to(grad, shape)


def _trace(fn: Callable[..., Tensor], inputs: tuple) -> _Program | None:
    """Record fn's ops on `inputs`; None when something other than elementwise ops was used."""
    from .ops import ElementwiseOp

    recording.tape = []
    try:
        with no_grad():
            result = fn(*inputs)
        tape = recording.tape
    finally:
        recording.tape = None
    refs: dict[int, tuple] = {id(t): ("in", k) for k, t in enumerate(inputs)}
    steps = []
    for cls, args, settings, out in tape:
        if not (isinstance(cls, type) and issubclass(cls, ElementwiseOp)):
            return None
        operand_refs = []
        for arg in args:
            if isinstance(arg, Tensor):
                if id(arg) not in refs:
                    return None  # a tensor from outside the function: not one of its inputs
                operand_refs.append(refs[id(arg)])
            else:
                operand_refs.append(("c", float(arg)))
        operand_refs += [("c", float(settings[name])) for name in cls.settings]
        refs[id(out)] = ("v", len(steps))
        steps.append((cls, tuple(operand_refs)))
    if not isinstance(result, Tensor) or refs.get(id(result), ("in",))[0] != "v":
        return None
    label = "_".join(cls.__name__.lower() for cls, _ in steps)
    return _Program(steps, refs[id(result)][1], len(inputs), label)


class FusedOp(Function):
    """A traced chain of elementwise ops run as one node: one kernel forward, one backward."""

    def forward(self, *inputs: Any, program: _Program) -> Any:
        self.program, self.saved_inputs = program, inputs
        if type(inputs[0]) is np.ndarray:
            # on the CPU the twins keep every step's value, so backward need not recompute them
            with K.silenced_numpy():
                self.values = program.values_twin(*inputs)
            out = np.asarray(self.values[program.output])
            self.shape = out.shape
            return out
        return program.forward_row(*inputs)

    def backward(self, gy: Any) -> tuple:
        needed = self.needs_input_grad
        if type(gy) is np.ndarray:
            result = self.program.gradient_twin(needed)(*self.saved_inputs, self.values, gy, self.shape)
        else:
            result = self.program.backward_row(needed)(*self.saved_inputs, gy)
            result = result if isinstance(result, tuple) else (result,)
        grads = iter(result)
        return tuple(next(grads) if need else None for need in needed)

    @property
    def name(self) -> str:
        """Fused(...) with the names of the ops it runs."""
        return "Fused(" + "→".join(cls.__name__ for cls, _ in self.program.steps) + ")"


class fuse:
    """Decorator: a function of Tensors made of elementwise ops runs as one fused kernel.

    Traced once per combination of input shapes and dtypes (constants in the function may depend
    on them). A function that uses anything else (reductions, matmul, tensors from outside) simply
    runs eagerly. Example: ``squared_error = tg.fuse(lambda a, b: (a - b) ** 2)``.
    """

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._programs: dict[tuple, _Program | None] = {}

    def __call__(self, *inputs: Tensor) -> Tensor:
        if not all(isinstance(t, Tensor) for t in inputs):
            return self.fn(*inputs)
        key = tuple((t.shape, t.dtype.char) for t in inputs)
        if key not in self._programs:
            self._programs[key] = _trace(self.fn, inputs)
        program = self._programs[key]
        if program is None:
            return self.fn(*inputs)
        return FusedOp.apply(*inputs, program=program)
