"""README's speed tables are the committed results files, rendered: they cannot drift from them."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- results: (\S+) -->\n((?:\|.*\n)+)")


def _tables():
    return MARKER.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_has_result_tables():
    assert len(_tables()) >= 2


@pytest.mark.parametrize("path,table", _tables())
def test_each_table_is_its_results_file(path, table, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("report", None)
    import report

    assert (ROOT / path).is_file(), f"README names {path}, which is not committed"
    assert table.rstrip("\n") == report.markdown_table(str(ROOT / path))
