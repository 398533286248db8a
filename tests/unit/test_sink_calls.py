"""Which sink methods go through ``call_sink`` (engine/sinkcalls.py), as its docstring and
docs/architecture.md list them: the list is read from the calls in the package's code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from vezastream.engine import sinkcalls

PACKAGE = Path(__file__).resolve().parents[2] / "vezastream"


def methods_called_through_call_sink(source: str) -> set[str]:
    """The method names given to ``call_sink(sink, "<method>", ...)`` in ``source``."""
    return {node.args[1].value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "call_sink"
            and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)}


def test_the_docstring_names_every_method_called_through_call_sink():
    called = set().union(*(methods_called_through_call_sink(p.read_text()) for p in PACKAGE.rglob("*.py")))
    assert sinkcalls.__doc__ is not None
    listed = sinkcalls.__doc__.split("\n\n")[1].split(".\n")[0]  # "These sink methods are awaited through ..."
    assert called == set(re.findall(r"``(\w+)``", listed))
    assert called >= {"open_content", "remove", "abort", "put_direct"}


def test_the_reader_sees_a_call():
    assert methods_called_through_call_sink('await call_sink(self.sink, "remove", u)\ncall_sink(s, m)\n') == {"remove"}
