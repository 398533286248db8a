"""Every hookspec is typed, documented in hookspecs.py and in docs/plugins.md, and tested.

A new hook cannot land without a heading in the guide and a ``test_hook_<name>``
test; a hook removed from hookspecs.py cannot linger in the guide.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from vezastream import hookspecs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"


def _hookspecs() -> dict[str, object]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if name.startswith("vezastream_") and callable(fn) and hasattr(fn, "vezastream_spec")}


HOOKS = sorted(_hookspecs())


def _test_names() -> set[str]:
    names = set()
    for path in ROOT.glob("tests/**/test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
    return names


def _guide_headings() -> dict[str, str]:
    """Hook name -> the signature written in its ``### `name(args)` `` heading."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^### `(vezastream_\w+)\(([^)]*)\)`", GUIDE.read_text(), re.M)}


def test_there_are_hooks_beyond_sinks():
    assert len(HOOKS) >= 9 and all(re.fullmatch(r"vezastream_[a-z]+_[a-z_]+", h) for h in HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_the_guide_with_its_signature(hook):
    headings = _guide_headings()
    assert hook in headings, f"docs/plugins.md needs a '### `{hook}(...)`' heading"
    params = ", ".join(inspect.signature(_hookspecs()[hook]).parameters)
    assert headings[hook] == params, f"docs/plugins.md shows {hook}({headings[hook]}), the spec takes ({params})"


def test_the_guide_names_no_hook_that_does_not_exist():
    assert set(_guide_headings()) <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    assert f"test_hook_{hook}" in _test_names(), f"add a test named test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_is_typed_and_documented(hook):
    fn = _hookspecs()[hook]
    sig = inspect.signature(fn)
    assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), hook
    assert sig.return_annotation is not inspect.Signature.empty, hook
    doc = inspect.getdoc(fn) or ""
    assert "Runs" in doc and "Example::" in doc, f"{hook}: say when it runs and give an example"


def test_readme_links_the_guide():
    assert "docs/plugins.md" in (ROOT / "README.md").read_text()
