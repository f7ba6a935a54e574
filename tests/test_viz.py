"""tg.viz: the recorded graph as DOT text, drawing it, and matrices drawn as boxes."""

import re
import shutil

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import viz

NODE = re.compile(r'^\s*(n\d+) \[label="((?:[^"\\]|\\.)*)", (.*)\];$')
EDGE = re.compile(r"^\s*(n\d+) -> (n\d+);$")


def parse_dot(text):
    """{node id: label lines}, {node id: style}, and the list of (source, target) edges."""
    labels, styles, edges = {}, {}, []
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    for line in text.splitlines():
        if match := NODE.match(line):
            labels[match[1]] = match[2].split("\\n")
            styles[match[1]] = match[3]
        elif match := EDGE.match(line):
            edges.append((match[1], match[2]))
    return labels, styles, edges


def by_title(labels):
    """Node id by the first line of its label (which must be unique)."""
    titles = [lines[0] for lines in labels.values()]
    assert len(set(titles)) == len(titles), titles
    return {lines[0]: node for node, lines in labels.items()}


def small_graph(device):
    a = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    b = tg.Tensor([3.0, 4.0], device=device, requires_grad=True)
    c = tg.Tensor([5.0, 6.0], device=device)
    return a, b, c, (a * b + c).sum()


def test_to_dot_has_one_node_per_op_and_leaf_and_the_right_edges(device):
    a, b, c, out = small_graph(device)
    labels, styles, edges = parse_dot(tg.viz.to_dot(out, names={"a": a, "b": b, "c": c}))
    node = by_title(labels)
    assert set(node) == {"a", "b", "c", "Mul", "Add", "Sum", "output"}
    assert sorted(edges) == sorted([
        (node["a"], node["Mul"]), (node["b"], node["Mul"]), (node["Mul"], node["Add"]),
        (node["c"], node["Add"]), (node["Add"], node["Sum"]), (node["Sum"], node["output"])])
    assert labels[node["a"]] == ["a", f"2 float32 {device}", "requires_grad"]
    assert labels[node["c"]] == ["c", f"2 float32 {device}"]  # needs no gradient
    assert labels[node["Mul"]] == ["Mul", f"→ 2 float32 {device}"]
    assert labels[node["Sum"]] == ["Sum", f"→ scalar float32 {device}"]
    assert labels[node["output"]] == ["output", f"scalar float32 {device}"]
    assert "box" in styles[node["a"]] and "ellipse" in styles[node["Mul"]]


def test_to_dot_shows_gradient_shapes_after_backward_with_retain_graph(device):
    a, b, c, out = small_graph(device)
    hidden = (a * 2).retain_grad()
    loss = (hidden + b).sum()
    loss.backward(retain_graph=True)
    labels, _, edges = parse_dot(tg.viz.to_dot(loss, names={"a": a, "b": b, "h": hidden}))
    node = by_title(labels)
    assert labels[node["a"]][-1] == "grad 2"
    assert labels[node["b"]][-1] == "grad 2"
    assert labels[node["Mul"]] == ["Mul", f"→ h: 2 float32 {device}", "grad 2"]
    assert (node["2"], node["Mul"]) in edges  # the Python number 2 is a constant input


def test_to_dot_marks_a_graph_released_by_backward(device):
    _, _, _, out = small_graph(device)
    out.backward()
    labels, _, edges = parse_dot(tg.viz.to_dot(out))
    node = by_title(labels)
    assert set(node) == {"Sum", "output"}
    assert labels[node["Sum"]][-1] == "released by backward()"
    assert edges == [(node["Sum"], node["output"])]


def test_to_dot_repeated_input_leaf_root_and_long_chain(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    labels, _, edges = parse_dot(tg.viz.to_dot(x * x, names={"x": x}))
    node = by_title(labels)
    assert edges.count((node["x"], node["Mul"])) == 2
    labels, _, edges = parse_dot(tg.viz.to_dot(x))
    assert [lines[0] for lines in labels.values()] == ["leaf"] and edges == []
    y = x
    for _ in range(3000):  # deeper than Python's recursion limit
        y = y * 1.0
    labels, _, edges = parse_dot(tg.viz.to_dot(y))
    assert len(labels) == 3000 + 3000 + 1 + 1 and len(edges) == 2 * 3000 + 1
    with pytest.raises(TypeError, match="takes a Tensor"):
        tg.viz.to_dot([1, 2])


def test_draw_writes_dot_text(device, tmp_path):
    a, b, c, out = small_graph(device)
    written = tg.viz.draw(out, tmp_path / "graph.dot", names={"a": a})
    assert written == tmp_path / "graph.dot"
    assert written.read_text(encoding="utf-8") == tg.viz.to_dot(out, names={"a": a})
    with pytest.raises(ValueError, match="cannot tell the format from 'graph.jpeg'"):
        tg.viz.draw(out, tmp_path / "graph.jpeg")


def test_draw_falls_back_to_dot_text_with_a_hint(tmp_path, monkeypatch, capsys):
    _, _, _, out = small_graph("cpu")
    monkeypatch.setattr(viz, "_renderer_problem", lambda: "the dot program is missing")
    written = tg.viz.draw(out, tmp_path / "graph.svg")
    assert written == tmp_path / "graph.dot" and not (tmp_path / "graph.svg").exists()
    assert written.read_text(encoding="utf-8").startswith("digraph")
    message = capsys.readouterr().out
    assert "the dot program is missing" in message
    assert f"dot -Tsvg {tmp_path / 'graph.dot'} -o {tmp_path / 'graph.svg'}" in message


@pytest.mark.skipif(viz._renderer_problem() is not None or shutil.which("dot") is None,
                    reason="the graphviz package or the dot program is not installed")
def test_draw_renders_svg_with_graphviz(tmp_path):
    a, b, c, out = small_graph("cpu")
    written = tg.viz.draw(out, tmp_path / "graph.svg", names={"a": a, "b": b, "c": c})
    svg = written.read_text(encoding="utf-8")
    assert written == tmp_path / "graph.svg" and "<svg" in svg
    for label in ("Mul", "Add", "Sum", "requires_grad"):
        assert label in svg


def test_matrix_box_draws_values_title_footer_and_notes():
    lines = tg.viz.matrix_box(np.array([[1.5, -2.0], [0.25, 1e-6]]), "M", "2×2 cpu", ["← first", ""])
    assert lines[0].startswith("┌─ M ─") and lines[0].rstrip().endswith("┐")
    assert lines[-1].startswith("└─ 2×2 cpu ─") and lines[-1].rstrip().endswith("┘")
    assert len({len(line) for line in lines}) == 1  # a block: every line equally wide
    assert lines[1].rstrip().endswith("│ ← first")
    rows = [line[1:line.index("│", 1)].split() for line in lines[1:-1]]
    assert rows == [["1.5000", "-2.0000"], ["0.2500", "1.000e-06"]]
    whole = tg.viz.matrix_box(tg.Tensor([[0, 1], [1, 0]]))
    assert [line[1:-1].split() for line in whole[1:-1]] == [["0", "1"], ["1", "0"]]
    assert tg.viz.matrix_box(tg.Tensor(3.0))[1].split() == ["│", "3", "│"]


def test_beside_centres_connectors_between_blocks():
    tall = tg.viz.matrix_box(np.zeros((3, 1)), "tall")
    short = tg.viz.matrix_box(np.ones(1), "short")
    lines = tg.viz.beside(tall, " ─▶ ", short)
    assert len(lines) == len(tall) == 5
    assert [i for i, line in enumerate(lines) if "─▶" in line] == [2]
    assert lines[1] == tall[1] + " " * 4 + short[0]  # the short block is centred: rows 1 to 3
    assert lines[2] == tall[2] + " ─▶ " + short[1]
    assert lines[0] == tall[0] and lines[4] == tall[4]  # trailing spaces are trimmed
