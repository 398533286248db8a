"""Every hookspec is typed, documented in hookspecs.py and in docs/plugins.md, and tested.

A new hook cannot land without a heading in the guide and a ``test_hook_<name>``
test; a hook removed from hookspecs.py cannot linger in the guide.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from pathlib import Path

import pytest

from vezastream import hookspecs

ROOT = Path(__file__).resolve().parent.parent.parent
GUIDE = ROOT / "docs" / "plugins.md"


def _hookspecs() -> dict[str, object]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if name.startswith("vezastream_") and callable(fn) and hasattr(fn, "vezastream_spec")}


HOOKS = sorted(_hookspecs())


@functools.cache  # parsed once for all the hooks' tests (about 1.2 s each time)
def _test_names() -> frozenset[str]:
    names = set()
    for path in ROOT.glob("tests/**/test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
    return frozenset(names)


def _guide_headings() -> dict[str, str]:
    """Hook name -> the signature written in its ``### `name(arg: type, ...)` `` heading."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^### `(vezastream_\w+)\(([^)]*)\)`", GUIDE.read_text(), re.M)}


def test_there_are_hooks_beyond_sinks():
    assert len(HOOKS) >= 9 and all(re.fullmatch(r"vezastream_[a-z]+_[a-z_]+", h) for h in HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_the_guide_with_its_typed_signature(hook):
    headings = _guide_headings()
    assert hook in headings, f"docs/plugins.md needs a '### `{hook}(...)`' heading"
    params = ", ".join(f"{name}: {_annotation(p)}" for name, p in inspect.signature(_hookspecs()[hook]).parameters.items())
    assert headings[hook] == params, f"docs/plugins.md shows {hook}({headings[hook]}), the spec takes ({params})"


def _annotation(param: inspect.Parameter) -> str:
    """A parameter's type as hookspecs.py writes it, without the quotes of forward references."""
    return re.sub("[\"']", "", str(param.annotation))


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


# -- the plugin SDK: one public surface, all of it in the guide --------------------------------
def _public_names() -> list[str]:
    import vezastream
    import vezastream.testing

    return sorted(set(vezastream.__all__) | set(vezastream.testing.__all__))


@pytest.mark.parametrize("name", _public_names())
def test_every_public_name_is_in_the_guide(name):
    import vezastream
    import vezastream.testing

    module = vezastream if name in vezastream.__all__ else vezastream.testing
    assert hasattr(module, name), f"{module.__name__}.__all__ lists {name!r}, which it does not define"
    assert re.search(rf"`{re.escape(name)}[`(]", GUIDE.read_text()), \
        f"docs/plugins.md must document {name!r}, a name in {module.__name__}.__all__"


def test_every_conformance_rule_is_in_the_guide():
    from vezastream.testing import RULES

    guide = GUIDE.read_text()
    assert not [rule for rule in RULES if f"| `{rule}` | {RULES[rule]} |" not in guide], \
        "docs/plugins.md's conformance table must state each rule as vezastream.testing.RULES does"


@pytest.mark.parametrize("protocol", ["Sink", "Assembly", "ServesContent", "RemovesObjects", "AbortsUploads",
                                      "ReceivesChunks", "SweepsLeftovers", "StagesBytes"])
def test_every_sink_method_says_what_it_does(protocol):
    import vezastream

    cls = getattr(vezastream, protocol)
    methods = [name for name, fn in vars(cls).items() if inspect.iscoroutinefunction(fn)]
    assert methods, f"{protocol} has no async methods"
    for name in methods:
        sig = inspect.signature(getattr(cls, name))
        assert sig.return_annotation is not inspect.Signature.empty, f"{protocol}.{name}: type its return"
        assert len(inspect.getdoc(getattr(cls, name)) or "") > 40, f"{protocol}.{name}: say what it does"
        assert f"{name}(" in GUIDE.read_text(), f"docs/plugins.md must show {protocol}.{name}"


@pytest.mark.parametrize("package", ["vezastream_local", "vezastream_s3"])
def test_the_builtin_sinks_import_only_the_public_surface(package):
    internal = []
    for path in (ROOT / "plugins" / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vezastream."):
                internal.append(f"{path.name}: from {node.module} import ...")
            if isinstance(node, ast.Import):
                internal += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("vezastream.")]
    assert not internal, f"use 'from vezastream import ...' only: {internal}"


# -- "What a sink receives": the table lists each type's fields, in order, and its properties ---------------
def _receives_table() -> dict[str, str]:
    """Type name -> its fields cell in the guide's "What a sink receives" table, parenthesised notes removed."""
    section = GUIDE.read_text().split("### What a sink receives", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for name, cell in re.findall(r"^\| `(\w+)` \| (.*) \|$", section, re.M):
        while (stripped := re.sub(r"\([^()]*\)", "", cell)) != cell:
            cell = stripped
        rows[name] = cell.replace("\\|", "|")
    return rows


@pytest.mark.parametrize("name", ["Upload", "UploadSpec", "UploadResult", "UploadStatus", "ChunkSource",
                                  "ChunkFile", "ChunkRecord"])
def test_what_a_sink_receives_lists_every_field(name):
    import dataclasses

    import vezastream

    cls = getattr(vezastream, name)
    cell = _receives_table()[name]
    fields, _, rest = cell.partition("; propert")
    shown = re.findall(r"`(\w+)", fields)
    if dataclasses.is_dataclass(cls):
        assert shown == [f.name for f in dataclasses.fields(cls)], f"docs/plugins.md: {name}'s fields"
        properties = sorted(n for n, v in vars(cls).items() if isinstance(v, property))
        assert sorted(re.findall(r"`(\w+)", rest.split(";")[0])) == properties, f"docs/plugins.md: {name}'s properties"
    else:
        assert shown == [member.name for member in cls], f"docs/plugins.md: {name}'s members"


def test_the_parse_table_example_replaces_the_quota_examples_import_and_configure_hook():
    """The quota module with its import line and configure hook swapped for "Reading a table"'s block works."""
    from vezastream import Rejected, UploadSpec

    quota, parse_table_block = re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(), re.M | re.S)[:2]
    quota_class = re.search(r"^class Quota:\n(?:(?:    .*)?\n)+", quota, re.M).group(0)
    namespace: dict[str, object] = {}
    exec(compile(parse_table_block + "\n\n" + quota_class, "plugins.md", "exec", dont_inherit=True), namespace)
    plugin = namespace["vezastream_configure_plugin"]({"max_size": "1KiB"})
    spec = UploadSpec(id="x" * 22, owner="o", filename="f", total_size=1025, chunk_size=1025, total_chunks=1,
                      created_at=0.0)
    assert isinstance(plugin.vezastream_validate_upload(spec), Rejected)


def test_the_notification_limits_in_the_guide_are_the_servers():
    """The guide's "How notifications run" states the server's numbers; the tests of the mechanism use
    others (a 0.3 s limit, a cap of 2), so the numbers a plugin author reads are checked here."""
    from vezastream import hooks

    text = " ".join(GUIDE.read_text().split("### How notifications run", 1)[1].split("\n### ", 1)[0].split())
    assert f"with a {hooks.NOTIFY_TIMEOUT:g}-second limit" in text
    assert f"in one of {hooks.NOTIFY_THREADS} threads" in text
    assert f"waits up to {hooks.DRAIN_TIMEOUT:g} seconds for running notifications" in text
    assert f"At most {hooks.MAX_PENDING:,} notifications run at once" in text
