"""The package's shape: no import circle, aiohttp only in the HTTP room, plugins only on the public surface.

Every module is imported on its own, none of the project's other modules
loaded (as aiohttp's own tests do, each in a fresh interpreter), so an
import that works only because another module happened to be loaded first
fails here. Circles are also looked for statically, in the
import statements themselves, ``if TYPE_CHECKING:`` blocks and imports inside
functions included: a circle hidden there is still one class in two files.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = ROOT / "vezastream"
#: Plugin packages shipped in this repository, and where each one's code lives.
PLUGINS = {"vezastream_local": ROOT / "plugins" / "vezastream_local",
           "vezastream_s3": ROOT / "plugins" / "vezastream_s3",
           "vezastream_webhook": ROOT / "plugins" / "vezastream-webhook" / "vezastream_webhook"}
#: The modules that may import aiohttp: the HTTP room, the HTTP client, the test kit and the CLI.
AIOHTTP_ALLOWED = ("vezastream.http", "vezastream.client", "vezastream.testing", "vezastream.cli")


def module_name(path: Path, top: Path, package: str) -> str:
    parts = [package, *path.relative_to(top).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(top: Path = PACKAGE, package: str = "vezastream") -> dict[str, Path]:
    return {module_name(path, top, package): path for path in sorted(top.rglob("*.py"))}


ALL = modules()


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``path`` imports, anywhere in it (TYPE_CHECKING and functions too)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import mod`` imports the module ``pkg.mod``; ``from mod import name`` imports ``mod``.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    return {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
            for stmt in node.body for inner in ast.walk(stmt)}


def raw_imports(path: Path, typing_only: bool = True) -> set[str]:
    """Absolute names ``path`` imports, anywhere in it (without ``typing_only``: not for annotations only)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if typing_only else _type_checking_only(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once, as the path that closes it."""
    found, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            found.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, stack + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def fresh_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), str(ROOT / "plugins"), str(ROOT / "plugins" / "vezastream-webhook"),
                               os.environ.get("PYTHONPATH", "")])})


#: Every module but ``__main__`` (which runs the CLI), and the plugins.
ALONE = sorted(set(ALL) - {"vezastream.__main__"}) + sorted(PLUGINS)

#: Run in one fresh interpreter: each module imported with none of the project's modules loaded
#: (the libraries they use stay loaded, as they cannot hide an order among ours); prints what failed.
IMPORT_EACH_ALONE = """
import json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0].startswith("vezastream")]:
        del sys.modules[loaded]
    try:
        __import__(name)
    except BaseException:
        failed[name] = traceback.format_exc()
print(json.dumps(failed))
"""


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    """Each module's traceback, for those that fail to import alone (one interpreter for all: one
    each took 0.5-1 s, about 30 s for the suite)."""
    done = fresh_python(IMPORT_EACH_ALONE, *ALONE)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ALONE)
def test_every_module_imports_alone(name, import_failures):
    assert name not in import_failures, import_failures[name]


def test_no_import_circle_type_checking_included():
    graph = {name: imported(name, path, ALL) for name, path in ALL.items()}
    # A package's __init__ may re-export its own modules; they never import it back (checked here too).
    assert circles(graph) == []


def test_the_graph_sees_a_circle():
    """The check above can fail: two modules importing each other are found."""
    assert circles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b", "a"]]


def test_only_the_http_room_imports_aiohttp():
    """At run time, that is: the hookspecs may name ``web.Request`` in a hook's signature for type checkers."""
    offenders = sorted(name for name, path in ALL.items()
                       if not name.startswith(AIOHTTP_ALLOWED)
                       and any(imp == "aiohttp" or imp.startswith("aiohttp.")
                               for imp in raw_imports(path, typing_only=False)))
    assert offenders == []


def test_the_aiohttp_check_sees_an_import(tmp_path):
    (tmp_path / "door.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import redis\n"
                                      "from aiohttp import web\n")
    assert raw_imports(tmp_path / "door.py", typing_only=False) == {"typing", "aiohttp"}


def test_the_engine_runs_without_aiohttp_loaded():
    outside = [name for name in ALL if not name.startswith(AIOHTTP_ALLOWED) and name != "vezastream.__main__"]
    done = fresh_python(f"import sys\nfor name in {outside!r}: __import__(name)\n"
                        "print('aiohttp' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_plugins_import_only_the_public_surface(plugin):
    """A plugin under plugins/ imports ``vezastream`` (its ``__all__``), never an internal module."""
    internal = sorted({imp for path in PLUGINS[plugin].rglob("*.py") if "tests" not in path.parts
                       for imp in raw_imports(path) if imp.startswith("vezastream.")})
    assert internal == []


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists its packages by name: a new folder of modules must be on that list, or the
    installed server lacks it (and fails at its first import)."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(path, PACKAGE, "vezastream") for path in PACKAGE.rglob("__init__.py")}
    assert folders - listed == set()
