"""The figures in docs/ are what the commands README.md names draw today, and make passes options on."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dot_label_lines(dot: str) -> Counter:
    """Every line of every node label of a DOT file (edges carry no labels here)."""
    lines: Counter = Counter()
    for label in re.findall(r'label="((?:[^"\\]|\\.)*)"', dot):
        lines.update(label.replace('\\"', '"').replace("\\\\", "\\").split("\\n"))
    return lines


def svg_text_lines(svg: str) -> Counter:
    """Every text element of an SVG drawn by Graphviz."""
    return Counter(html.unescape(text) for text in re.findall(r"<text[^>]*>([^<]*)</text>", svg))


@pytest.mark.parametrize("figure, options", [
    ("xor-graph.svg", []),                       # a training step: the fused graph
    ("xor-graph-unfused.svg", ["--explain"]),    # the op-by-op step --explain walks through
])
def test_xor_graph_figure_is_current(tmp_path, figure, options):
    pytest.importorskip("graphviz", reason="examples/xor.py --graph needs the graphviz package (dev extra)")
    """The SVG in docs/ shows the nodes and labels examples/xor.py --graph draws now."""
    dot_path = tmp_path / "graph.dot"
    env = dict(os.environ, TINYGRAD_GPU_DEVICE="cpu", CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, str(ROOT / "examples" / "xor.py"), "--device", "cpu", "--quiet",
                    "--epochs", "1", "--graph", str(dot_path), *options],
                   cwd=tmp_path, env=env, check=True, capture_output=True, text=True, timeout=300)
    expected = dot_label_lines(dot_path.read_text(encoding="utf-8"))
    drawn = svg_text_lines((ROOT / "docs" / figure).read_text(encoding="utf-8"))
    assert drawn == expected, (
        f"docs/{figure} is stale: redraw it with python examples/xor.py {' '.join(options)} "
        f"--graph docs/{figure}\nonly in the figure: {drawn - expected}\n"
        f"only in the graph: {expected - drawn}")


def test_svg_reader_sees_every_label():
    """The comparison above reads the labels it should (guards the regular expressions)."""
    dot = 'digraph g {\n  n0 [label="Fused(A→B)\\n→ 4×1 float32 cpu", shape=ellipse];\n}'
    svg = '<svg><text x="1">Fused(A&#8594;B)</text><text y="2">→ 4×1 float32 cpu</text></svg>'
    assert dot_label_lines(dot) == svg_text_lines(svg) == Counter(["Fused(A→B)", "→ 4×1 float32 cpu"])


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target, variable, script", [("digits", "DIGITS_ARGS", "examples/digits.py"),
                                                      ("xor", "XOR_ARGS", "examples/xor.py")])
def test_make_example_targets_pass_options(target, variable, script):
    """`make digits DIGITS_ARGS=...` (and xor's XOR_ARGS) hand the options to the example."""
    done = subprocess.run(["make", "-n", target, f"{variable}=--device cpu --epochs 3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    assert f"{script} --device cpu --epochs 3" in done.stdout, done.stdout
