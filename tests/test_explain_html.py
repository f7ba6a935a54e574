"""tg.viz.explain_step / explain_html: the page shows the run's own numbers, memory and graphs."""

import contextlib
import importlib.util
import io
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu.viz import format_number

pytest.importorskip("jinja2")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


xor = load_example("xor")
shot = load_example("explain_shot")

X = [[0, 0], [0, 1], [1, 0], [1, 1]]
Y = [[0], [1], [1], [0]]
# Weights typed in here (not the example's), with units that are dead on some inputs.
WEIGHTS = {"0.weight": [[0.5, -0.3], [-0.4, 0.6], [0.2, 0.1], [-0.3, -0.4]], "0.bias": [0.1, 0.2, -0.15, 0.0],
           "2.weight": [[0.3, -0.4, 0.2, 0.5]], "2.bias": [0.1]}


class PageReader(HTMLParser):
    """The boxes (data-matrix key -> rows of printed cells), the memory rows and the data island."""

    def __init__(self):
        super().__init__()
        self.boxes, self.memory, self.phase_bytes, self.data_text = {}, [], [], ""
        self._box = self._row = self._cell = None
        self._in_data = self._in_memory = False
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "data-matrix" in attrs:
            self._box, self._depth = attrs["data-matrix"], 0
            self.boxes[self._box] = []
        elif tag == "div" and self._box is not None:
            self._depth += 1
        elif tag == "tr" and self._box is not None:
            self._row = []
            self.boxes[self._box].append(self._row)
        elif tag == "td" and self._box is not None and attrs.get("class") != "note":
            self._cell = ""
        elif tag == "script" and attrs.get("id") == "explain-data":
            self._in_data = True
        elif tag == "table" and attrs.get("id") == "memory":
            self._in_memory = True
        elif tag == "tr" and self._in_memory:
            self._row = {"kind": attrs.get("data-kind"), "cells": []}
            self.memory.append(self._row)
        elif tag == "td" and self._in_memory:
            self._cell = ""
            if "data-phase-bytes" in attrs:
                self.phase_bytes.append(int(attrs["data-phase-bytes"]))

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            (self._row if self._box is not None else self._row["cells"]).append(self._cell.strip())
            self._cell = None
        elif tag == "div" and self._box is not None:
            if self._depth == 0:
                self._box = None
            else:
                self._depth -= 1
        elif tag == "script":
            self._in_data = False
        elif tag == "table":
            self._in_memory = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_data:
            self.data_text += data


def read_page(text):
    reader = PageReader()
    reader.feed(text)
    data = json.loads(reader.data_text)
    stored = {m["key"]: m for m in data["matrices"]}
    for m in data["matrices"]:  # a matrix shown twice is stored once
        if "same_as" in m:
            m["values"] = stored[m["same_as"]]["values"]
    return reader, data


def seeded_model(device):
    model = tg.nn.Sequential(tg.nn.Linear(2, 4, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(4, 1, device=device), tg.nn.Sigmoid())
    model.load_state_dict(WEIGHTS)
    return model


def numpy_step(lr):
    """The first SGD step written out again in float32 NumPy, independently of the library."""
    f32 = np.float32
    x, y = np.array(X, f32), np.array(Y, f32)
    W1, b1 = np.array(WEIGHTS["0.weight"], f32), np.array(WEIGHTS["0.bias"], f32)
    W2, b2 = np.array(WEIGHTS["2.weight"], f32), np.array(WEIGHTS["2.bias"], f32)
    z1 = x @ W1.T + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ W2.T + b2
    y_hat = 1 / (1 + np.exp(-z2))
    diff = y_hat - y
    g_y_hat = 2 * diff / diff.size
    g_z2 = g_y_hat * y_hat * (1 - y_hat)
    g_a1 = g_z2 @ W2
    g_z1 = g_a1 * (a1 > 0)
    grads = {"W₁": g_z1.T @ x, "b₁": g_z1.sum(0), "W₂": g_z2.T @ a1, "b₂": g_z2.sum(0)}
    old = {"W₁": W1, "b₁": b1, "W₂": W2, "b₂": b2}
    expected = {"forward:X": x, "forward:Z₁": z1, "forward:A₁": a1, "forward:Z₂": z2, "forward:ŷ": y_hat,
                "loss:Y": y, "loss:diff = ŷ − Y": diff, "loss:squared": diff ** 2,
                "loss:sum": (diff ** 2).sum(), "loss:loss": (diff ** 2).mean(), "backward:∂L/∂ŷ": g_y_hat,
                "backward:∂L/∂Z₂": g_z2, "backward:∂L/∂A₁": g_a1, "backward:∂L/∂Z₁": g_z1,
                "backward:ReLU mask": (a1 > 0).astype(f32)}
    for name in old:
        expected.update({f"forward:{name}": old[name], f"backward:∂L/∂{name}": grads[name],
                         f"update:{name} before": old[name], f"update:∂L/∂{name}": grads[name],
                         f"update:{name} after": old[name] - lr * grads[name]})
    return expected


def explained_page(device, lr=0.5, **html):
    model = seeded_model(device)
    x, y = tg.Tensor(X, device=device), tg.Tensor(Y, device=device)
    optimizer = tg.optim.SGD(model.parameters(), lr=lr)
    record = tg.viz.explain_step(model, x, y, optimizer)
    return model, record, tg.viz.explain_html(record, **html)


def test_every_boxed_matrix_equals_the_run(device):
    model, record, text = explained_page(device)
    page, data = read_page(text)
    island = {m["key"]: m for m in data["matrices"]}
    expected = numpy_step(0.5)
    assert set(expected) <= set(page.boxes), set(expected) - set(page.boxes)
    assert set(page.boxes) == set(island)
    for key, values in expected.items():
        shown = island[key]
        exact = np.array(shown["values"], dtype=shown["dtype"]).reshape(shown["shape"])
        np.testing.assert_allclose(exact, values, rtol=2e-6, atol=1e-7, err_msg=key)
        # the printed cells are those numbers as the terminal boxes print them
        cells = [c for row in page.boxes[key] for c in row]
        printed = [str(int(v)) if float(v).is_integer() and np.all(exact == np.round(exact)) else
                   format_number(float(v)) for v in exact.ravel()]
        assert cells == printed, key
    # the live tensors of the same run: the parameters after the step, the walk's gradients
    for name, p in zip(("W₁", "b₁", "W₂", "b₂"), model.parameters()):
        shown = island[f"update:{name} after"]
        np.testing.assert_array_equal(np.array(shown["values"], dtype=shown["dtype"]), p.numpy().ravel())
    for name in ("Z₁", "A₁", "Z₂", "ŷ"):
        live = record.tensors[name]
        for key, array in ((f"forward:{name}", live.numpy()), (f"backward:∂L/∂{name}", live.grad.numpy())):
            if key in island:
                shown = np.array(island[key]["values"], dtype=np.float32)
                np.testing.assert_array_equal(shown, array.ravel(), err_msg=key)
    assert f"{record.loss_value:.6f}" in text and record.loss_after < record.loss_value


def test_each_box_names_its_kernel_and_device(device):
    _, record, text = explained_page(device)
    page, _ = read_page(text)
    for key, kernel in (("forward:A₁", "row relu"), ("forward:ŷ", "row sigmoid"),
                        ("backward:∂L/∂Z₂", "row sigmoid_bwd"), ("backward:∂L/∂Z₁", "row relu_bwd"),
                        ("update:W₁ after", "row sgd_step"), ("loss:sum", "Sum")):
        box = re.search(rf'data-matrix="{re.escape(key)}".*?<div class="foot">([^<]*)</div>', text, re.S)
        assert box and kernel in box.group(1) and box.group(1).endswith(f"· {device}"), (key, box)


def test_memory_table_equals_graph_memory(device):
    _, record, text = explained_page(device)
    page, data = read_page(text)
    # the graph training builds, made again here from the same weights
    model = seeded_model(device)
    loss = tg.nn.MSELoss()(model(tg.Tensor(X, device=device)), tg.Tensor(Y, device=device))
    report = tg.graph_memory(loss)
    graph_rows = [r for r in page.memory if r["kind"] == "graph"]
    held = sorted(b.nbytes for b in report.buffers if not b.leaf)
    assert sorted(int(r["cells"][4]) for r in graph_rows) == held
    assert data["memory"]["graph_only_bytes"] == report.graph_only_bytes
    assert data["memory"]["graph_total_bytes"] == report.total_bytes
    assert f"{report.graph_only_bytes} B is held only by the graph" in text
    params = sum(p.array.nbytes for p in model.parameters())
    data_bytes = 4 * 2 * 4 + 4 * 1 * 4
    graph = report.graph_only_bytes
    expected = [params + data_bytes + graph, params * 2 + data_bytes + graph,
                params * 2 + data_bytes, params * 2 + data_bytes]  # SGD without momentum keeps no state
    assert page.phase_bytes == expected
    assert f"peak {max(expected)} B" in text


def test_both_graphs_are_drawn(device):
    _, record, text = explained_page(device)
    assert "The graph the guide draws (op by op)</b> — 10 op nodes" in text
    assert "The fused graph training builds</b> — 3 op nodes" in text
    for label in ("Fused(MatMul→Add→ReLU)", "Fused(MatMul→Add→Sigmoid)", "MatMul", "Sigmoid", "Pow"):
        assert f">{label}</text>" in text


def test_xor_html_is_self_contained_and_small(tmp_path, device):
    page = tmp_path / "xor.html"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = xor.main(["--explain", "--quiet", "--html", str(page), "--device", device])
    assert f"explained page written to {page}" in out.getvalue()
    text = page.read_text(encoding="utf-8")
    assert len(text.encode()) < 1_000_000
    _, data = read_page(text)
    assert len(data["snapshots"]) == 102  # the start, after the explained step, then 100 recorded epochs
    assert data["snapshots"][-1]["epoch"] == 1000
    assert data["curve"]["n"] == len(result["history"]) == 1000
    # nothing is fetched: no external script, style, image or font
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?https?:""", text)


def test_html_without_explain_and_for_digits(tmp_path):
    page = tmp_path / "plain.html"
    with contextlib.redirect_stdout(io.StringIO()):
        xor.main(["--quiet", "--epochs", "20", "--html", str(page), "--device", "cpu"])
    assert "Phase 4: parameter update" in page.read_text(encoding="utf-8")
    pytest.importorskip("sklearn")
    digits = load_example("digits")
    page = tmp_path / "digits.html"
    with contextlib.redirect_stdout(io.StringIO()):
        digits.main(["--epochs", "1", "--hidden", "32", "--quiet", "--device", "cpu", "--html", str(page)])
    text = page.read_text(encoding="utf-8")
    reader, data = read_page(text)
    assert 'class="heat" data-key="forward:W₁"' in text  # 32×64: a heat map, not 2048 printed numbers
    island = {m["key"]: m for m in data["matrices"]}
    assert island["forward:W₁"]["shape"] == [32, 64] and len(island["forward:W₁"]["values"]) == 2048
    assert "cross-entropy" in text and "backward:∂L/∂Z₃" in island


class Double(tg.nn.Module):
    def forward(self, x):
        return x * 2


def test_explain_step_refuses_what_it_cannot_draw():
    x, y = tg.Tensor(X, device="cpu"), tg.Tensor(Y, device="cpu")
    model = seeded_model("cpu")
    optimizer = tg.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="Sequential"):
        tg.viz.explain_step(model[0], x, y, optimizer)
    with pytest.raises(TypeError, match="only Linear layers and activations"):
        tg.viz.explain_step(tg.nn.Sequential(tg.nn.Linear(2, 1, device="cpu"), Double()), x, y, optimizer)
    with pytest.raises(ValueError, match="loss must be"):
        tg.viz.explain_step(model, x, y, optimizer, loss="hinge")
    with pytest.raises(TypeError, match="optimizer must be"):
        tg.viz.explain_step(model, x, y, "sgd")
    model(x).sum().backward()
    grads = [p.grad.numpy() for p in model.parameters()]
    with pytest.raises(ValueError, match="Linear"):  # wrong input width: found before anything changes
        tg.viz.explain_step(model, tg.Tensor([[0.0, 1.0, 2.0]], device="cpu"), y, optimizer)
    assert all(np.array_equal(g, p.grad.numpy()) for g, p in zip(grads, model.parameters()))
    before = [p.numpy() for p in model.parameters()]
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(before, model.parameters()))  # nothing changed
    with pytest.raises(TypeError, match="StepRecord"):
        tg.viz.explain_html("not a record")


def test_explain_html_names_the_extra_when_jinja2_is_missing(monkeypatch):
    _, record, _ = explained_page("cpu")
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ImportError, match=r"tinygrad_gpu\[viz\]"):
        tg.viz.explain_html(record)


@pytest.mark.skipif(shot.find_chromium() is None, reason="no headless Chromium installed")
def test_page_renders_in_headless_chromium(tmp_path):
    page = tmp_path / "xor.html"
    with contextlib.redirect_stdout(io.StringIO()):
        xor.main(["--explain", "--quiet", "--html", str(page), "--device", "cpu"])
    first, last = shot.dump_dom(page, "snapshot=0"), shot.dump_dom(page, "snapshot=-1")
    for dom in (first, last):
        ready, errors = shot.page_status(dom)
        assert ready and not errors, errors
    weights = [re.findall(r'class="edge" data-w="([^"]+)"', dom) for dom in (first, last)]
    assert len(weights[0]) == len(weights[1]) == 2 * 4 + 4 * 1  # one edge per weight
    assert weights[0] != weights[1]  # the slider's position redraws the network with that epoch's weights
    _, data = read_page(page.read_text(encoding="utf-8"))
    for drawn, snapshot in zip(weights, (data["snapshots"][0], data["snapshots"][-1])):
        recorded = snapshot["params"]["W₁"] + snapshot["params"]["W₂"]  # edges go W[j, i], row by row
        np.testing.assert_allclose([float(w) for w in drawn], recorded, rtol=1e-4)
    png = shot.screenshot(page, tmp_path / "page.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
