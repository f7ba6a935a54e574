"""graph_memory and diagnose_gradients / gradcheck(locate=True)."""

import numpy as np
import pytest
from planted import WrongSquare

import tinygrad_gpu as tg
from tinygrad_gpu import function, ops


# ---- graph_memory ---------------------------------------------------------------------------
def test_graph_memory_lists_each_buffer_once_with_its_holders(device):
    x = tg.Tensor(np.ones((8, 3), np.float32), device=device)  # float32 leaf data: 96 bytes
    w = tg.Tensor(np.ones((3, 5), np.float32), device=device, requires_grad=True)  # 60 bytes
    hidden = (x @ w).relu()  # MatMul output 160 bytes, ReLU output 160 bytes (saved as y)
    loss = hidden.sum()
    report = tg.graph_memory(loss)
    assert report.nodes == 3
    assert report.total_bytes == 96 + 60 + 160 + 160  # MatMul's saved a and b are x and w: not again
    assert report.graph_only_bytes == 160 + 160
    relu_output = [b for b in report.buffers if any(h.startswith("#0 Sum") for h in b.held_by)]
    assert relu_output[0].held_by == ["#0 Sum: inputs[0]", "#1 ReLU: y"]
    text = str(report)
    assert "3 nodes keep 4 buffers alive, 476 B" in text and "(8, 3)" in text and "leaf" in text
    assert ("CuPy pool" in text) == (device == "cuda")
    loss.backward()
    assert tg.graph_memory(loss).total_bytes == 0  # backward released the saved arrays
    assert "no graph" in str(tg.graph_memory(loss))


def test_graph_memory_counts_a_view_with_its_buffer(device):
    w = tg.Tensor(np.ones((4, 2), np.float32), device=device, requires_grad=True)
    out = tg.Tensor(np.ones((3, 2), np.float32), device=device) @ w.T  # MatMul saves a view of w
    report = tg.graph_memory(out)
    assert [b.shape for b in report.buffers if b.leaf] == [(3, 2), (4, 2)]
    assert report.total_bytes == 24 + 32


# ---- diagnose_gradients ---------------------------------------------------------------------
def _composition(x, w, b):
    h = (x * w + b).tanh()
    return (h.exp() * h).sum(axis=0)


def _inputs(device):
    x = tg.Tensor([[0.3, -1.2, 0.5], [2.0, 0.7, -0.1]], device=device, requires_grad=True)
    w = tg.Tensor([0.5, -1.0, 2.0], device=device, requires_grad=True)
    b = tg.Tensor([0.1, 0.2, 0.3], device=device, requires_grad=True)
    return [x, w, b]


def test_locate_names_exactly_the_op_with_the_planted_mistake(device, monkeypatch):
    monkeypatch.setattr(ops.Tanh, "backward", lambda self, gy: (gy * (1 - self.y),))  # forgot the square
    with pytest.raises(tg.GradcheckError) as caught:
        tg.gradcheck(_composition, _inputs(device), locate=True)
    message = str(caught.value)
    assert "1 input(s) of Tanh disagree" in message and "#2 Tanh" in message
    assert "test_diagnostics.py" in message and "h = (x * w + b).tanh()" in message
    report = tg.diagnose_gradients(_composition, _inputs(device))
    assert [(f.op, f.position, f.input_index) for f in report.findings] == [("Tanh", 2, 0)]
    assert report.checked == 6  # Mul, Add, Tanh, Exp, Mul, Sum: every other op agrees
    finding = report.findings[0]
    assert finding.input_shape == (2, 3) and finding.broadcast_from is None
    assert abs(finding.analytic - finding.numeric) > 1e-3


def test_locate_points_at_a_broadcast_reduction(device, monkeypatch):
    monkeypatch.setattr(ops.Add, "backward", lambda self, gy: (gy, gy * 2))  # wrong for the bias
    report = tg.diagnose_gradients(_composition, _inputs(device))
    assert [(f.op, f.input_index) for f in report.findings] == [("Add", 1)]
    assert report.findings[0].broadcast_from == (2, 3) and report.findings[0].input_shape == (3,)
    assert "broadcast reduction involved: backward returned shape (2, 3)" in str(report)


def test_locate_finds_a_wrong_custom_function_among_correct_ops(device):
    x = tg.Tensor([[1.5, -0.5], [0.25, 2.0]], device=device, requires_grad=True)
    report = tg.diagnose_gradients(lambda t: (WrongSquare.apply(t.sigmoid()) * t).mean(), [x])
    assert [f.op for f in report.findings] == ["WrongSquare"]
    assert report.checked == 4 and not report.ok  # Sigmoid, WrongSquare, Mul, mean (one Sum node)


def test_correct_code_gets_a_clean_report_and_recording_stops(device):
    def fails(*tensors):
        raise ValueError("inside fn")

    report = tg.diagnose_gradients(_composition, _inputs(device))
    assert report.ok and "all 6 nodes of the graph agree" in str(report)
    with pytest.raises(ValueError, match="inside fn"):
        tg.diagnose_gradients(fails, _inputs(device))
    assert function.diagnosis.recorder is None
    with pytest.raises(ValueError, match="requires_grad=True"):
        tg.diagnose_gradients(lambda t: t * 2, [tg.Tensor([1.0], device=device)])
    node = (_inputs(device)[0] * 2).grad_fn
    assert set(vars(node)) == {"a", "b"}  # outside diagnosis nothing extra is kept on nodes


def test_graph_memory_counts_arrays_a_node_keeps_in_lists(device):
    # a fused node keeps its inputs (and on the CPU each step's value) in lists and tuples
    x = tg.Tensor(np.ones((4, 4), np.float32), device=device, requires_grad=True)
    y = tg.fuse(lambda a: (a * 2.0).relu())(x)
    held = [h for b in tg.graph_memory(y).buffers for h in b.held_by]
    assert any("saved_inputs[0]" in h for h in held), held
