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
import hashlib
import numbers
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from . import fused_kernels, ops
from . import kernels as K
from .caches import LRU, PerInstance, keep_alive
from .function import Function, grad_mode, no_grad, recording
from .tensor import Tensor, is_ones_seed

# Traced programs kept per fused function (and per instance for a method), least recently used
# dropped first: a run meeting a new batch size every step holds at most this many.
PROGRAMS_PER_FUNCTION = 64
# A program's backward rows and twins, one per set of inputs needing a gradient (and the product's
# operands' sets): a handful in practice, at most this many kept.
BACKWARD_VARIANTS = 16


def _row_name(label: str, in_params: str, out_params: str, body: str) -> str:
    """A generated row's name, from its content: kernel caches are keyed by name, so two rows
    share a name only when they are the same kernel (the same chain traced at another shape
    reuses the compiled kernel instead of compiling one more)."""
    digest = hashlib.sha1(f"{in_params}|{out_params}|{body}".encode()).hexdigest()[:12]
    return f"fused_{label}_{digest}"


def _constant_table(steps: list) -> dict[str, tuple[str, float]]:
    """The chain's distinct constants: their exact spelling (float.hex, so -0.0 and 0.0 differ)
    -> (parameter name, value), in order of first use."""
    table: dict[str, tuple[str, float]] = {}
    for _, refs in steps:
        for kind, value in refs:
            if kind == "c":
                value = float(value)
                table.setdefault(value.hex(), (f"tg_c{len(table)}", value))
    return table


class _Program:
    """A traced chain: steps of (op class, operand refs); a ref is ("in", k), ("v", step) or ("c", value).

    The chain's inputs `in<k>` are the fused function's inputs listed in `chain_inputs` (indices
    into them), where None stands for the matrix product `head` = (a, b, transpose_b) that may
    come first; `reduces` says the chain's output is summed over all elements (a mean's scale is
    the chain's last step).
    """

    def __init__(self, steps: list, output: int, n_inputs: int, label: str, *,
                 chain_inputs: tuple | None = None, head: tuple | None = None,
                 reduces: bool = False) -> None:
        self.steps, self.output, self.n_inputs, self.label = steps, output, n_inputs, label
        self.chain_inputs = tuple(range(n_inputs)) if chain_inputs is None else chain_inputs
        self.chain_tensors = tuple(k for k in self.chain_inputs if k is not None)  # without the product
        self._chain_needed = LRU(BACKWARD_VARIANTS)
        self._plans = LRU(BACKWARD_VARIANTS)  # backward_plan's, per set of inputs needing a gradient
        self.head, self.reduces = head, reduces
        names = (["MatMul"] if head else []) + [cls.__name__ for cls, _ in steps]
        self.node_name = "Fused(" + "→".join(names + (["Sum"] if reduces else [])) + ")"
        # Constants are the kernels' parameters, never part of their source: every value (inf,
        # NaN, -0.0, subnormals, beyond float32's range) reaches a kernel as the unfused op's does,
        # and a constant that depends on the shape (a mean's 1/n) compiles no kernel per shape.
        self._constants = _constant_table(steps)
        self.constants = tuple(value for _, value in self._constants.values())
        self.constant_params = "".join(f", T {name}" for name, _ in self._constants.values())
        self.forward_row = self._build_forward()
        self._backward_rows = LRU(BACKWARD_VARIANTS)  # per set of inputs needing a gradient
        self._gradient_outputs = LRU(BACKWARD_VARIANTS)  # gradient_outputs' answers, likewise
        # (needed, plan) of the last backward: the same layer's next backward takes it directly
        self.last_plan: tuple = ((), None)

    # ---- CUDA source ------------------------------------------------------------------------
    def _operand(self, ref: tuple) -> str:
        kind, value = ref
        if kind == "c":
            return self._constants[float(value).hex()][0]
        return f"in{value}" if kind == "in" else f"v{value}"

    def constant_args(self, dtype: Any) -> tuple:
        """The constants as kernel arguments of `dtype` (rounded as the unfused ops round them)."""
        return tuple(K.as_scalar(dtype, value) for value in self.constants)

    def _step_source(self, index: int) -> str:
        """`T v<index>;` computed from its operands by the op's forward row."""
        cls, refs = self.steps[index]
        row = cls.row
        names = row.input_names
        binds = "".join(f"T {n} = {self._operand(r)}; " for n, r in zip(names, refs))
        out = row.output_names[0]
        return f"T v{index}; {{ {binds}T {out}; {{ {row.body}; }} v{index} = {out}; }}\n"

    def _build_forward(self) -> K.Elementwise:
        inputs = ", ".join(f"T in{k}" for k in range(self.n_inputs)) + self.constant_params
        body = self.values_source() + f"out = v{self.output};"
        return K.Elementwise(_row_name(self.label, inputs, "T out", body), inputs, "T out", body,
                             self._forward_twin, scalars=self._constant_names, register=False)

    @property
    def _constant_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._constants.values())

    def backward_row(self, needed: tuple[bool, ...]) -> tuple[K.Elementwise, list[int]]:
        """The row computing d(out)/d(in_k) * gy for the inputs with needed[k], and for each needed
        input the index of the row output holding its gradient (inputs whose gradients are the same
        value, like z and the bias in activation(z + bias), share one output: one array written)."""
        built = self._backward_rows.get(needed)
        if built is None:
            built = self._backward_rows[needed] = self._build_backward(needed)
        return built

    def values_source(self) -> str:
        """CUDA statements declaring every step's value `v<i>` from the inputs `in<k>`."""
        return "".join(self._step_source(i) for i in range(len(self.steps)))

    def gradient_source(self) -> tuple[str, dict[str, list[str]]]:
        """CUDA statements computing `g_in<k>` (gy times d(out)/d(in<k>)) from the inputs and `gy`,
        and what each gradient variable received (to spot inputs whose gradients are equal)."""
        statements, added = self.gradient_statements
        return self.values_source() + statements, added

    @functools.cached_property
    def gradient_statements(self) -> tuple[str, dict[str, list[str]]]:
        """gradient_source without the values' statements (for a kernel that has them already)."""
        lines = [f"T g_v{i} = (T)0; " for i in range(len(self.steps))]
        lines += [f"T g_in{k} = (T)0; " for k in range(self.n_inputs)]
        lines.append(f"g_v{self.output} = gy;\n")
        added: dict[str, list[str]] = {}  # what each gradient variable received, to spot equal ones
        # a variable's first contribution is assigned, later ones added, as the twins do: 0 + x
        # would turn a -0.0 gradient into +0.0; steps nothing flows back through are skipped
        assigned = {f"g_v{self.output}"}
        for index in reversed(range(len(self.steps))):
            cls, refs = self.steps[index]
            if f"g_v{index}" not in assigned:
                continue
            names = cls.row.input_names
            for rule, ref in zip(cls.grads, refs):
                if ref[0] == "c" or rule is None:
                    continue
                target = f"g_in{ref[1]}" if ref[0] == "in" else f"g_v{ref[1]}"
                update = "+=" if target in assigned else "="
                assigned.add(target)
                if rule == "gy":
                    lines.append(f"{target} {update} g_v{index};\n")
                    added.setdefault(target, []).append(f"g_v{index}")
                    continue
                added.setdefault(target, []).append("computed")  # never merged with another
                grad_row, arg_names = rule
                # the rule names values (forward inputs, "y", "gy"); the row's body uses its own
                # parameter names, bound here to those values
                value_of = {n: self._operand(r) for n, r in zip(names, refs)}
                value_of["y"], value_of["gy"] = f"v{index}", f"g_v{index}"
                binds = "".join(f"T {param} = {value_of[n]}; "
                                for param, n in zip(grad_row.input_names, arg_names))
                out = grad_row.output_names[0]
                lines.append(f"{{ T tg_r; {{ {binds}T {out}; {{ {grad_row.body}; }} tg_r = {out}; }} "
                             f"{target} {update} tg_r; }}\n")
        return "".join(lines), added

    def gradient_outputs(self, needed: tuple[bool, ...]) -> tuple[tuple[int, ...], list[int]]:
        """(the inputs whose gradient a kernel writes, for each needed input the position of the
        output holding its gradient): inputs whose gradients are the same value share one."""
        built = self._gradient_outputs.get(needed)
        if built is not None:
            return built
        _, added = self.gradient_statements
        outputs: list[int] = []
        slot: list[int] = []
        for k in (k for k in range(self.n_inputs) if needed[k]):
            received = added.get(f"g_in{k}", ["zero"])
            twin = next((i for i, j in enumerate(outputs) if received != ["computed"]
                         and added.get(f"g_in{j}") == received), None)
            if twin is None:
                outputs.append(k)
                twin = len(outputs) - 1
            slot.append(twin)
        built = self._gradient_outputs[needed] = (tuple(outputs), slot)
        return built

    def _build_backward(self, needed: tuple[bool, ...]) -> tuple[K.Elementwise, list[int]]:
        source, _ = self.gradient_source()
        outputs, slot = self.gradient_outputs(needed)
        lines = [source] + [f"gx{k} = g_in{k};" for k in outputs]
        inputs = ", ".join([f"T in{k}" for k in range(self.n_inputs)] + ["T gy"]) + self.constant_params
        out_params, body = ", ".join(f"T gx{k}" for k in outputs), "".join(lines)
        row = K.Elementwise(_row_name(self.label + "_bwd", inputs, out_params, body), inputs,
                            out_params, body, functools.partial(self._backward_twin, outputs),
                            scalars=self._constant_names, register=False)
        return row, slot

    # ---- NumPy twins: the same steps through the rows' own twins, as straight-line Python ------
    def _operand_py(self, ref: tuple) -> str:
        kind, value = ref
        if kind == "c":  # by name: the value itself (inf, NaN, -0.0, ...) sits in the namespace
            return self._constants[float(value).hex()][0]
        return f"in{value}" if kind == "in" else f"v{value}"

    def _compile(self, name: str, params: list[str], lines: list[str], result: str) -> Any:
        namespace: dict[str, Any] = {f"twin{i}": cls.row.twin for i, (cls, _) in enumerate(self.steps)}
        # the Python float the unfused op is given, so the twins round it exactly as they do there
        namespace.update(self._constants.values())
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

    def _forward_twin(self, *args: Any) -> Any:
        # the constants passed after the inputs are the namespace's own values
        return self.values_twin(*args[:self.n_inputs])[self.output]

    def chain_needed(self, needed: tuple[bool, ...]) -> tuple[bool, ...]:
        """Which chain inputs need a gradient, given which of the function's inputs do (the
        product does when either of its operands does)."""
        chain_needed = self._chain_needed.get(needed)
        if chain_needed is None:
            head = self.head
            chain_needed = self._chain_needed[needed] = tuple(
                needed[k] if k is not None else needed[head[0]] or needed[head[1]]
                for k in self.chain_inputs)
        return chain_needed

    def backward_plan(self, needed: tuple[bool, ...]) -> list:
        """[chain_needed(needed), whether every needed chain gradient is gy itself (nothing to
        compute), the CPU gradient twin once made (else None), for each needed chain input the
        function's input it is (None: the product)]: one look-up per backward."""
        plan = self._plans.get(needed)
        if plan is None:
            chain_needed = self.chain_needed(needed)
            passes = not self.reduces and all(p for p, n in zip(self.passes_gy_through, chain_needed) if n)
            places = [k for k, need in zip(self.chain_inputs, chain_needed) if need]
            plan = self._plans[needed] = [chain_needed, passes, None, places]
        self.last_plan = (needed, plan)
        return plan

    @functools.cached_property
    def passes_gy_through(self) -> tuple[bool, ...]:
        """For each chain input, whether its gradient is gy itself (as for z and the bias of
        z + bias): then backward needs no kernel for it."""
        _, added = self.gradient_source()
        plain = [f"g_v{self.output}"]
        untouched = f"g_v{self.output}" not in added
        return tuple(untouched and added.get(f"g_in{k}") == plain for k in range(self.n_inputs))

    def gradient_twin(self, needed: tuple[bool, ...]) -> Any:
        """(inputs, values, gy) -> the needed input gradients, each in the full broadcast shape."""
        key = ("twin",) + needed
        twin = self._backward_rows.get(key)
        if twin is None:
            twin = self._backward_rows[key] = self._compile_gradient(needed)
        return twin

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
            names = cls.row.input_names
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
                if grad == "0":
                    outputs.append(f"_full({grad}, gy, shape)")
                    continue
                # _full's own test first, inline: an array of gy's dtype and the full shape is kept
                lines.append(f"if not (type({grad}) is ndarray and {grad}.dtype is gy.dtype "
                             f"and {grad}.shape == shape): {grad} = _full({grad}, gy, shape)")
                outputs.append(grad)
        params = [f"in{k}" for k in range(self.n_inputs)] + ["values", "gy", "shape"]
        function = self._compile("gradients", params, lines, f"({', '.join(outputs)},)")
        function.__globals__["_full"] = _full
        function.__globals__["ndarray"] = np.ndarray
        return function

    def _backward_twin(self, outputs: list[int], *args: Any) -> Any:
        inputs, gy = args[:self.n_inputs], args[self.n_inputs]  # then the constants
        needed = tuple(k in outputs for k in range(self.n_inputs))
        shape = np.broadcast_shapes(*(np.shape(a) for a in (*inputs, gy)))
        results = self.gradient_twin(needed)(*inputs, self.values_twin(*inputs), gy, shape)
        return results[0] if len(results) == 1 else results


def _full(grad: Any, gy: Any, shape: tuple) -> Any:
    """A gradient as an array of the full broadcast shape (as the GPU kernel writes it)."""
    grad = np.asarray(grad, gy.dtype)
    return grad if grad.shape == shape else np.broadcast_to(grad, shape)


def _trace(fn: Callable[..., Tensor], inputs: tuple) -> _Program | None:
    """Record fn's ops on `inputs`; None when they are not a fusible chain.

    Fusible: elementwise ops on the inputs, optionally preceded by one 2-D matrix product of two
    inputs (a Linear layer's x @ W.T) or followed by a sum over all elements (a loss's mean).
    """
    from .ops import ElementwiseOp, MatMul, Mul, Sum

    outer, recording.tape = recording.tape, []  # a trace inside a jit's warm-up keeps its watcher
    try:
        with no_grad():
            result = fn(*inputs)
        tape = recording.tape
    finally:
        recording.tape = outer
    if not isinstance(result, Tensor) or not tape:
        return None
    position = {id(t): k for k, t in enumerate(inputs)}
    head = product = None
    first_cls, first_args, first_settings, first_out = tape[0]
    if first_cls is MatMul and len(tape) > 1:
        a, b = first_args
        if (id(a) in position and id(b) in position and a is not b and a.ndim == 2 and b.ndim == 2):
            head = (position[id(a)], position[id(b)], bool(first_settings.get("transpose_b", False)))
            product, tape = first_out, tape[1:]
    reduced = None
    last_cls, last_args, last_settings, last_out = tape[-1]
    if (head is None and last_cls is Sum and len(tape) > 1 and last_out is result
            and last_settings.get("axis") is None and not last_settings.get("keepdims")):
        reduced, tape = last_args[0], tape[:-1]
    # the chain's inputs: the function's inputs other than the product's operands, then the product
    chain_inputs = tuple(k for k in range(len(inputs)) if head is None or k not in head[:2])
    refs: dict[int, tuple] = {id(inputs[k]): ("in", j) for j, k in enumerate(chain_inputs)}
    if product is not None:
        chain_inputs += (None,)
        refs[id(product)] = ("in", len(chain_inputs) - 1)
    steps = []
    for cls, args, settings, out in tape:
        if not (isinstance(cls, type) and issubclass(cls, ElementwiseOp)):
            return None
        operand_refs = []
        for arg in args:
            if isinstance(arg, Tensor):
                if id(arg) not in refs:
                    return None  # a tensor from outside the function (or a product's operand)
                operand_refs.append(refs[id(arg)])
            else:
                operand_refs.append(("c", float(arg)))
        operand_refs += [("c", float(settings[name])) for name in cls.settings]
        refs[id(out)] = ("v", len(steps))
        steps.append((cls, tuple(operand_refs)))
    chain_output = result if reduced is None else reduced
    if refs.get(id(chain_output), ("in",))[0] != "v":
        return None
    output = refs[id(chain_output)][1]
    names = [cls.__name__.lower() for cls, _ in steps]
    if reduced is not None and last_settings.get("scale", 1.0) != last_settings.get("scale", 1.0):
        return None  # the mean of nothing (scale NaN): scaling each of no elements would give 0
    if reduced is not None and last_settings.get("scale", 1.0) != 1.0:
        # a mean: the scale joins the chain, so the backward row applies it too
        steps.append((Mul, (("v", output), ("c", float(last_settings["scale"])))))
        output = len(steps) - 1
    label = "_".join((["matmul"] if head else []) + names + (["sum"] if reduced is not None else []))
    return _Program(steps, output, len(chain_inputs), label, chain_inputs=chain_inputs, head=head,
                    reduces=reduced is not None)


class FusedOp(Function):
    """A traced chain run as one node: one kernel forward and one backward where shapes allow.

    With a matrix product at its head, small products on the GPU run product and chain in one
    launch each way (fused_kernels.py); large ones call cuBLAS, then the chain's row. A chain that
    ends in a sum hands the sum to the reduction kernel and its backward is the chain's row alone.
    """

    # the label lives in a slot, outside the state release() clears: a released node still
    # names itself in reprs, viz and the "backward a second time" error
    __slots__ = ("label",)
    broadcasts_inputs = True
    saves_output = None  # decided per node: see keeps_output in forward

    def forward(self, *inputs: Any, program: _Program, seed: tuple[bool, ...] | None = None) -> Any:
        # seed: which inputs need a gradient, given for a chain ending in a sum (a loss) when
        # backward may start here: the GPU's forward launch then leaves those gradients ready
        self.label = program.node_name
        self.program, self.saved_inputs = program, inputs
        chain_args = list(map(inputs.__getitem__, program.chain_tensors))
        if isinstance(inputs[0], np.ndarray):
            # on the CPU the twins keep every step's value, so backward recomputes none of them;
            # they include the output's, unless a sum follows it
            self.keeps_output = not program.reduces
            head = program.head
            if head is not None:
                b = inputs[head[1]]
                chain_args.append(K.matmul(inputs[head[0]], b.swapaxes(-1, -2) if head[2] else b,
                                           any_layout=True))
            self.chain_args = chain_args
            if K.quiet.depth:
                return self._cpu_output(program, chain_args)
            with K.silenced_numpy():
                return self._cpu_output(program, chain_args)
        # on the GPU the node keeps the chain's inputs (backward recomputes the step values)
        self.keeps_output = False
        if program.head is not None:
            a, b, transpose_b = inputs[program.head[0]], inputs[program.head[1]], program.head[2]
            plan = fused_kernels.forward_plan(program, a, b, transpose_b, chain_args)
            kind = plan[0]
            if kind != "other":
                shape = (a.shape[0], b.shape[0] if transpose_b else b.shape[1])
                if kind == "small":
                    self.chain_args = None  # backward recomputes the product in its own kernel
                    return fused_kernels.forward(plan, a, b, chain_args, shape)
                out, z = fused_kernels.tiled_forward(plan, a, b, chain_args, shape)
                chain_args.append(z)  # backward's rows recompute the chain's values from z
                self.chain_args, self.shape = chain_args, shape
                return out
            chain_args.append(ops.matmul_product(a, b, transpose_b))
        self.chain_args = chain_args
        if program.reduces and fused_kernels.reduce_fits(chain_args):
            seed_needed = None if seed is None else program.chain_needed(seed)
            out, self.shape, seed_grads = fused_kernels.chain_sum(program, chain_args, seed_needed)
            if seed_grads is not None:
                self.seed_grads = (seed_needed, seed_grads)
            return out
        out = program.forward_row(*chain_args, *program.constants)
        self.shape = out.shape
        return K.SUM(out) if program.reduces else out

    def backward(self, gy: Any) -> tuple:
        program, needed = self.program, self.needs_input_grad
        head = program.head
        if head is not None and self.chain_args is None:  # the forward ran as one launch
            grads = fused_kernels.backward(program, self.saved_inputs, gy, needed)
            if grads is not None:
                return grads
            a, b = self.saved_inputs[head[0]], self.saved_inputs[head[1]]
            self.chain_args = [self.saved_inputs[k] for k in program.chain_tensors]
            self.chain_args.append(ops.matmul_product(a, b, head[2]))
        if head is not None and not isinstance(gy, np.ndarray):
            grads = fused_kernels.tiled_backward(program, self.saved_inputs, self.chain_args, gy, needed)
            if grads is not None:
                return grads
        last_needed, plan = program.last_plan
        if last_needed != needed:
            plan = program.backward_plan(needed)
        chain_needed = plan[0]
        if plan[1]:
            result = [gy] * sum(chain_needed)  # e.g. x @ W.T + b: nothing to compute
        elif isinstance(gy, np.ndarray):
            twin = plan[2]
            if twin is None:
                twin = plan[2] = program.gradient_twin(chain_needed)
            result = twin(*self.chain_args, self.values, gy, self.shape)
        else:
            seeded = self.__dict__.pop("seed_grads", None)  # handed out once: a later backward computes anew
            if seeded is not None and seeded[0] == chain_needed and is_ones_seed(gy):
                result = seeded[1]  # computed by the forward's launch
            else:
                row, slot = program.backward_row(chain_needed)
                written = row(*self.chain_args, gy, *program.constants)
                written = written if isinstance(written, tuple) else (written,)
                result = [written[i] for i in slot]
        return self._placed(plan[3], result)

    def _cpu_output(self, program: _Program, chain_args: list) -> Any:
        """The chain's step values on the CPU (kept for backward) and the node's output from them."""
        values = self.values = program.values_twin(*chain_args)
        out = np.asarray(values[program.output])
        self.shape = out.shape
        return K.SUM(out) if program.reduces else out

    def _placed(self, places: list, chain_grads: Any) -> tuple:
        """Each input's gradient in its place: the needed chain inputs' gradients as they are, the
        product's turned into its operands' gradients (`places` from the backward plan)."""
        needed = self.needs_input_grad
        grads: list[Any] = [None] * len(needed)
        for k, grad in zip(places, chain_grads):
            if k is not None:
                grads[k] = grad
                continue
            first, second, transposed = self.program.head
            inputs = self.saved_inputs  # (read now: in a CPU tape's replay a promoted operand is new)
            grads[first], grads[second] = ops.matmul_gradients(inputs[first], inputs[second], transposed,
                                                               grad, needed[first], needed[second])
        return tuple(grads)

    def tape_forward(self, *inputs: Any, program: _Program, seed: tuple[bool, ...] | None = None) -> Any:
        """forward's CPU work on these very arrays as a function of no arguments, the branches taken
        once (a CPU tape's replays: the same calls, so the same bits); None on the GPU."""
        if not isinstance(inputs[0], np.ndarray):
            return None
        node, head, chain = self, program.head, [inputs[k] for k in program.chain_tensors]
        if head is None:
            return functools.partial(node._cpu_output, program, chain)
        a, b, matmul = inputs[head[0]], inputs[head[1]], K.matmul
        if head[2]:
            b = b.swapaxes(-1, -2)  # a view of the parameter: a replay sees its current values

        def run_with_product() -> Any:
            args = node.chain_args = [*chain, matmul(a, b, any_layout=True)]
            return node._cpu_output(program, args)
        return run_with_product

    def tape_backward(self, gy: Any) -> Any:
        """backward's CPU work for this very gradient array as a function of no arguments (it reads
        what the forward's replay left in the node); None on the GPU."""
        if not isinstance(gy, np.ndarray):
            return None
        node, shape = self, self.shape
        chain_needed, passes, _, places = self.program.backward_plan(self.needs_input_grad)
        if passes:  # every needed chain gradient is gy itself
            return functools.partial(node._placed, places, [gy] * len(places))
        twin = self.program.gradient_twin(chain_needed)
        return lambda: node._placed(places, twin(*node.chain_args, node.values, gy, shape))

    def backward_graph(self, gy: Any) -> tuple:
        """The gradients of the chain re-run op by op as recorded tensor ops (create_graph=True)."""
        from .autograd.engine import gradients

        program, inputs = self.program, self.inputs
        chain = [inputs[k] if k is not None else None for k in program.chain_inputs]
        if program.head is not None:
            a, b, transpose_b = program.head
            chain[-1] = ops.MatMul.apply(inputs[a], inputs[b], transpose_b=transpose_b)
        values: list = []
        for cls, refs in program.steps:
            args = [chain[v] if kind == "in" else values[v] if kind == "v" else v for kind, v in refs]
            n = len(args) - len(cls.settings)
            values.append(cls.apply(*args[:n], **dict(zip(cls.settings, args[n:]))))
        out = values[program.output]
        if program.reduces:
            out = ops.Sum.apply(out)
        wanted = [t for t, needed in zip(inputs, self.needs_input_grad) if needed]
        found = iter(gradients([out], [gy], wanted, create_graph=True, allow_unused=True, local=True))
        return tuple(next(found) if needed else None for needed in self.needs_input_grad)

    @property
    def name(self) -> str:
        """Fused(...) with the names of the ops it runs (kept after backward released the node)."""
        return getattr(self, "label", "Fused")


class fuse:
    """Decorator: a function of Tensors made of elementwise ops runs as one fused kernel.

    Traced once per combination of input shapes and dtypes and of the other arguments
    (numbers, strings, None), positional or keyword: constants in the function may depend on
    them; other Python values it reads (a closure's, the instance's attributes) are taken as
    they were when traced. The last PROGRAMS_PER_FUNCTION traces are kept. A function that uses
    anything else (reductions, matmul, tensors from outside, other kinds of arguments) simply
    runs eagerly. On a method, each instance has its own traces (held without keeping the
    instance alive). Example:
    ``squared_error = tg.fuse(lambda a, b: (a - b) ** 2)``.
    """

    def __init__(self, fn: Callable[..., Tensor], *, method: bool = False) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.method = method  # a copy for one instance: the first argument is that instance
        self._programs = LRU(PROGRAMS_PER_FUNCTION)
        # (key, program) of the last positional call: a layer called again with the same shapes
        # finds its program by one comparison, without hashing the key
        self._last: tuple = ((), None)
        self._per_instance = PerInstance(lambda: fuse(fn, method=True))

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """On an instance, the fused method bound to it (each instance has its own traces)."""
        if instance is None:
            return self
        return types.MethodType(self._per_instance.get(instance, self.__name__), instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if not kwargs and not self.method:  # the common call: tensors (and values) by position
            key: list = [len(args), ()]
            tensors = []
            for value in args:
                if isinstance(value, Tensor):
                    array = value.array
                    key.append((array.shape, array.dtype))
                    tensors.append(value)
                elif isinstance(value, _SETTINGS):
                    key.append(("value", type(value), value))
                else:
                    break
            else:
                key_tuple = tuple(key)
                last_key, program = self._last
                # (through the cache while tg.jit captures: it keeps what the graph launches alive)
                if last_key != key_tuple or keep_alive.target is not None:
                    program = self._programs.get(key_tuple, _UNTRACED)
                    if program is _UNTRACED or program is None:
                        return self._call(args, kwargs)
                    self._last = (key_tuple, program)
                return _apply(program, tensors)
        return self._call(args, kwargs)

    def _call(self, args: tuple, kwargs: dict) -> Tensor:
        fn = self.fn
        if self.method:  # the instance is no part of the key (the traces must not keep it alive)
            fn, args = functools.partial(fn, args[0]), args[1:]
        names = tuple(sorted(kwargs))
        given = args + tuple(kwargs[n] for n in names)
        key: list = [len(args), names]
        tensors = []
        for value in given:
            if isinstance(value, Tensor):
                key.append((value.array.shape, value.array.dtype))
                tensors.append(value)
            elif isinstance(value, _SETTINGS):  # traced with its value, so part of the key
                key.append(("value", type(value), value))
            else:  # an object that may change between calls: no trace can stand for it
                return fn(*args, **kwargs)
        if not tensors:
            return fn(*args, **kwargs)
        key_tuple = tuple(key)
        program = self._programs.get(key_tuple, _UNTRACED)
        if program is _UNTRACED:
            program = _trace(_with_settings(fn, given, len(args), names), tuple(tensors))
            self._programs[key_tuple] = program
        if program is None:
            return fn(*args, **kwargs)
        return _apply(program, tensors)


def _apply(program: _Program, tensors: list) -> Tensor:
    """The program's node on these tensors; a chain ending in a sum (a loss) is told which of them
    need a gradient, when any does and gradients are recorded (its forward may then compute them)."""
    if program.reduces:
        needs = tuple(t.requires_grad for t in tensors)
        if True in needs and grad_mode.enabled:
            return FusedOp.apply(*tensors, program=program, seed=needs)
    return FusedOp.apply(*tensors, program=program)


_UNTRACED = object()
_SETTINGS = (numbers.Number, str, bytes, type(None))  # arguments that are values, not objects


def _with_settings(fn: Callable[..., Any], given: tuple, n_positional: int,
                   names: tuple[str, ...]) -> Callable[..., Any]:
    """fn as a function of the tensors alone: the other arguments put back in their places."""

    def call(*tensors: Tensor) -> Any:
        supply = iter(tensors)
        values = [next(supply) if isinstance(v, Tensor) else v for v in given]
        return fn(*values[:n_positional], **dict(zip(names, values[n_positional:])))

    return call
