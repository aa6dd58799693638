"""The generated blocks of docs/results.md and README.md match the committed run reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _renderer():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "docs" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_result_blocks_are_current():
    assert _renderer().main(["--check"]) == 0, "run: python docs/render_results.py"


def test_blocks_take_a_section_or_the_tables(tmp_path):
    r = _renderer()
    (tmp_path / "s.md").write_text("# S\n\nintro\n\n## A\n\n| x |\n|---|\n| 1 |\n\n## B\n\ntext\n")
    doc = ("<!-- include: s.md#section=A -->\nold\n<!-- end include -->\n"
           "<!-- include: s.md -->\n<!-- end include -->\n")
    out = r.render(doc, tmp_path)
    assert out == ("<!-- include: s.md#section=A -->\n| x |\n|---|\n| 1 |\n<!-- end include -->\n"
                   "<!-- include: s.md -->\n| x |\n|---|\n| 1 |\n<!-- end include -->\n")
    with pytest.raises(SystemExit, match="no heading"):
        r.render("<!-- include: s.md#section=C -->\n<!-- end include -->", tmp_path)
