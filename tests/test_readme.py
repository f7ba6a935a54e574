"""README.md runs as written: every code block is executed and every pasted output is compared.

The conventions, so that nothing in the README is pasted without being checked:

- A ```python block runs, on the CPU, in one namespace shared by the python blocks of its `##`
  section, in order (a later block may use the names of an earlier one); each section starts afresh,
  in one process. It is compiled as `example.py`. What it prints, each warning it raises (as
  `Category: message`) and an exception it ends with (as `Name: message`) make its output.
- A ```text block right after a python block (only blank lines between) is that block's output and
  must match it. A block with output must have one.
- A ```console block holds `$ command` lines and their output; the commands run from the
  repository root on the CPU (`python` is this interpreter) and the output must match.
- In an output, a line that is only `…` stands for any number of lines (an excerpt), and `…`
  inside a line for any text on that line (a timing).
- ```sh and ```bash blocks are set-up commands for the reader and are not run.
- `<!-- not run: reason -->` on the line before a block skips it (and its output), saying why.
  Any other kind of block is an error: label it.

README_TRACEBACKS=1 prints the traceback of a block that raises, to find what went wrong.
"""

from __future__ import annotations

import io
import json
import linecache
import os
import re
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(?P<kind>[\w-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->$")
ELLIPSIS = "…"


@dataclass
class Block:
    """One fenced block of README.md."""

    line: int  # 1-based line of the opening fence
    kind: str  # the fence's info string
    text: str
    section: str
    not_run: str | None = None  # the reason given, for a block marked as not run
    output: Block | None = None  # the pasted output of a python block
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """How a test names the block: its line and section."""
        return f"README.md:{self.line} ({self.section})"


def parse_readme(text: str) -> list[Block]:
    """The README's fenced blocks, output blocks attached to the python blocks they follow."""
    lines = text.splitlines()
    blocks: list[Block] = []
    section, marker, previous, i = "top", None, None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(("# ", "## ")):
            section = line.lstrip("#").strip()
        fence = FENCE.match(line)
        if fence is None:
            found = NOT_RUN.match(line.strip())
            if found:
                marker = found["reason"]
            elif line.strip():
                marker, previous = None, None  # prose between two blocks: the second is not an output
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: a code block is never closed")
        block = Block(i + 1, fence["kind"], "\n".join(lines[i + 1:end]), section, marker)
        if block.kind == "text" and previous is not None and previous.kind == "python":
            previous.output = block
            previous = None
        else:
            if block.kind not in ("python", "console", "sh", "bash") and block.not_run is None:
                block.errors.append(f"a ```{block.kind} block that is neither code to run, the output of "
                                    "the python block before it, nor marked <!-- not run: reason -->")
            blocks.append(block)
            previous = block
        marker = None
        i = end + 1
    return blocks


def output_matches(expected: str, actual: str) -> bool:
    """True when `actual` is `expected`, with `…` lines matching any lines and `…` in a line any text."""
    pattern = ""
    for line in expected.rstrip().splitlines():
        if line.strip() == ELLIPSIS:
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += ".*?".join(re.escape(part) for part in line.rstrip().split(ELLIPSIS)) + r"\n"
    cleaned = "".join(line.rstrip() + "\n" for line in actual.rstrip().splitlines())
    return re.fullmatch(pattern, cleaned) is not None


def cpu_environment() -> dict[str, str]:
    """The environment the README's code runs in: this checkout, the CPU, no GPU visible."""
    env = dict(os.environ, TINYGRAD_GPU_DEVICE="cpu", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_python_blocks(blocks: list[tuple[str, str]]) -> list[str]:
    """Run (section, source) blocks in order, one namespace per section; what each printed, warned, raised."""
    warnings.resetwarnings()
    warnings.simplefilter("default")  # as a user's script sees them
    outputs = []
    namespaces: dict[str, dict] = {}
    for section, source in blocks:
        namespace = namespaces.setdefault(section, {"__name__": "__main__"})
        # Messages that quote a line of the user's code find it here, as they would in a file.
        linecache.cache["example.py"] = (len(source), None, source.splitlines(True), "example.py")
        captured = io.StringIO()
        real_stdout = sys.stdout
        sys.stdout = captured
        warnings.showwarning = lambda message, category, *_, **__: print(f"{category.__name__}: {message}")
        try:
            exec(compile(source, "example.py", "exec"), namespace)
        except Exception as error:  # the block's last statement raised: that is part of its output
            print(f"{type(error).__name__}: {error}")
            if os.environ.get("README_TRACEBACKS"):
                traceback.print_exc(file=real_stdout)
        finally:
            sys.stdout = real_stdout
        outputs.append(captured.getvalue())
    return outputs


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.kind == "python" and b.not_run is None]
CONSOLE = [b for b in BLOCKS if b.kind == "console" and b.not_run is None]


@pytest.fixture(scope="module")
def python_outputs(tmp_path_factory) -> dict[int, str]:
    """Each python block's output, from one fresh CPU process running them all in order."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "blocks.json").write_text(json.dumps([(b.section, b.text) for b in PYTHON]))
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(folder / "blocks.json")],
                          cwd=folder, env=cpu_environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the README runner failed:\n{done.stdout}\n{done.stderr}"
    outputs = json.loads((folder / "blocks.json.out").read_text())
    return {block.line: out for block, out in zip(PYTHON, outputs)}


def test_every_block_is_labelled():
    """Every block is code to run, an output, a set-up command, or marked as not run with a reason."""
    problems = [f"{b.name}: {error}" for b in BLOCKS for error in b.errors]
    assert not problems, "\n".join(problems)
    assert len(PYTHON) >= 5 and CONSOLE, "the README lost its examples"


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: f"line{b.line}")
def test_python_block(block: Block, python_outputs):
    """The block runs, and prints (warns, raises) exactly what its pasted output shows."""
    actual = python_outputs[block.line]
    if block.output is None:
        assert not actual.strip(), (f"{block.name} has output but no ```text block after it to show "
                                    f"it:\n{actual}")
        return
    assert output_matches(block.output.text, actual), (
        f"{block.name}: the pasted output (line {block.output.line}) is stale. The block gives:\n{actual}")


def console_commands(block: Block) -> list[tuple[str, str]]:
    """The (command, expected output) pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
        else:
            raise ValueError(f"{block.name}: a console block starts with a `$ command` line")
    return [(command, "\n".join(out)) for command, out in pairs]


@pytest.mark.parametrize("block", CONSOLE, ids=lambda b: f"line{b.line}")
def test_console_block(block: Block):
    """Each command of the block runs on the CPU and prints what the block shows."""
    for command, expected in console_commands(block):
        words = command.split()
        assert words[0] in ("python", "python3"), f"{block.name}: only python commands are run: {command}"
        done = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, env=cpu_environment(),
                              capture_output=True, text=True, timeout=600)
        actual = done.stdout + done.stderr
        assert output_matches(expected, actual), (
            f"{block.name}: `{command}` printed something else (exit {done.returncode}):\n{actual}")


def test_output_matching_rules():
    """`…` lines skip lines, `…` in a line skips text, everything else must match exactly."""
    assert output_matches("a\n…\nd", "a\nb\nc\nd\n")
    assert output_matches("a\n…\nb", "a\nb")
    assert output_matches("took … s", "took 1.25 s")
    assert not output_matches("a\nd", "a\nb\nd")
    assert not output_matches("took … s", "took 1.25 ms\nmore")
    assert not output_matches("x 1", "x 2")


def test_parser_rules():
    """Outputs attach to the python block just before them; unlabelled blocks are errors."""
    blocks = parse_readme("# s\n```python\nprint(1)\n```\n\n```text\n1\n```\ntext\n```\nodd\n```\n"
                          "<!-- not run: needs a GPU -->\n```python\nimport cupy\n```\n```python\n```\n"
                          "```\nunlabelled output\n```\n")
    assert [b.kind for b in blocks] == ["python", "", "python", "python", ""]
    assert blocks[0].output.text == "1" and blocks[1].errors and blocks[2].not_run == "needs a GPU"
    assert blocks[3].output is None and blocks[4].errors


if __name__ == "__main__":  # the runner: python tests/test_readme.py blocks.json
    sources = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[1] + ".out").write_text(json.dumps(run_python_blocks(sources)))
