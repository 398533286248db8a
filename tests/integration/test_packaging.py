"""Installing vezastream is safe: a fresh venv with vezastream and pytest, nothing else.

The package must not change how an unrelated pytest run behaves (the plugin author
kit is opt-in), must run as ``python -m vezastream`` and answer ``--version``, and
must ship ``py.typed`` for plugin authors' type checkers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

import vezastream

ROOT = Path(__file__).resolve().parent.parent.parent


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


#: Left out of the copy of the sources a test installs: a checkout's venv, build and data folders, and
#: what an editable install built in place (``*.so``), so that the install builds its own.
COPY_IGNORES = (".git", ".venv", ".venv-*", "build", "data", "node_modules", "__pycache__", "*.egg-info", "*.so")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new venv holding vezastream (without its dependencies or extras) and pytest."""
    root = tmp_path_factory.mktemp("fresh")
    venv.create(root / "venv", with_pip=True)
    py = root / "venv" / "bin" / "python"
    # Built from a copy of the sources: pip builds in the source tree, and a build/ folder left
    # in the checkout would carry modules of an older layout into the next wheel.
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        *COPY_IGNORES))
    done = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(source)], cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    done = _run([str(py), "-m", "pip", "install", "-q", "pytest"], cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return py


@pytest.mark.slow
def test_an_unrelated_pytest_run_is_unaffected(fresh_venv, tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    done = _run([str(fresh_venv), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
    # The kit is not loaded behind the test suite's back.
    done = _run([str(fresh_venv), "-m", "pytest", "--trace-config", "-q", "-p", "no:cacheprovider"], cwd=tmp_path)
    assert "vezastream" not in done.stdout


def _package_dir_listing(python: Path, cwd: Path, subdir: str, suffixes: tuple[str, ...]) -> str:
    """What the installed package holds in ``subdir`` (names ending in ``suffixes``), as printed by ``python``."""
    code = ("import importlib.util, pathlib, sys; "
            "d = pathlib.Path(importlib.util.find_spec('vezastream').origin).parent / sys.argv[1]; "
            "print(sorted(p.name for p in d.iterdir() if p.name.endswith(tuple(sys.argv[2:]))))")
    done = _run([str(python), "-c", code, subdir, *suffixes], cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_the_installed_package_ships_py_typed(fresh_venv, tmp_path):
    assert _package_dir_listing(fresh_venv, tmp_path, ".", ("py.typed",)) == "['py.typed']"


def test_python_dash_m_and_version():
    done = _run([sys.executable, "-m", "vezastream", "--version"], cwd=ROOT, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"vezastream {vezastream.__version__}"


def test_help_texts_are_plain_text():
    for args in (["--help"], ["serve", "--help"], ["gc", "--help"], ["config", "show", "--help"]):
        done = _run([sys.executable, "-m", "vezastream", *args], cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "``" not in done.stdout and ":func:" not in done.stdout and ":class:" not in done.stdout


@pytest.mark.parametrize("command, options", [
    (["serve"], ["--config CONFIG", "--host HOST", "--port PORT", "--workers WORKERS"]),
    (["gc"], ["--config CONFIG", "--dry-run"]),
    (["config", "show"], ["--config CONFIG"]),
    (["plugins"], ["--config CONFIG", "--check"]),
])
def test_every_option_of_a_command_says_what_it_is_in_its_help(command, options):
    """`serve --help` listed --config, --host and --port bare; the defaults come from the config file."""
    done = _run([sys.executable, "-m", "vezastream", *command, "--help"], cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps the help to the terminal's width
    for option in options:
        assert re.search(rf"{option} [a-z]", text), (option, done.stdout)
    if command == ["serve"]:
        assert "(default: server.host in the config file" in text and "(default: server.port in the" in text


@pytest.mark.slow
def test_the_installed_package_ships_the_uploader_page(fresh_venv, tmp_path):
    listing = _package_dir_listing(fresh_venv, tmp_path, "http/ui", (".html", ".js", ".css"))
    assert listing == "['index.html', 'uploader.css', 'uploader.js']"


@pytest.mark.slow
def test_the_installed_package_ships_its_sha256_module_built(fresh_venv, tmp_path):
    """A plain ``pip install`` builds staging/sha256x2.c (the native door's two digests in one pass)."""
    listing = _package_dir_listing(fresh_venv, tmp_path, "staging", (".so",))
    assert "_sha256x2." in listing


@pytest.mark.slow
def test_a_machine_without_a_c_compiler_installs_all_the_same(tmp_path):
    """The C module is optional: with no compiler the install goes on, and hashlib does its work."""
    venv.create(tmp_path / "venv", with_pip=True)
    py = tmp_path / "venv" / "bin" / "python"
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*COPY_IGNORES))
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(source)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CC": "false"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert _package_dir_listing(py, tmp_path, "staging", (".so",)) == "[]"


def _declared_minimum(package: str) -> str:
    """The lowest version of ``package`` pyproject.toml's dependencies accept (its ``>=`` bound)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [spec] = [d for d in deps if re.match(rf"{package}\b", d)]
    return re.search(r">=\s*([\w.]+)", spec).group(1)


#: Each dependency whose lower bound is tested, with the tests that use it the most (private attributes, signatures).
LOWER_BOUNDS = {
    "aiohttp": ["tests/unit/test_request_body.py", "tests/integration/test_header_timeout.py", "-k", "not unfinished"],
    "redis": ["tests/unit/test_batching.py", "tests/unit/test_state_store.py"],
}


@pytest.mark.slow
@pytest.mark.parametrize("package", sorted(LOWER_BOUNDS))
def test_the_oldest_version_declared_passes_the_tests_that_lean_on_it(tmp_path, package):
    """vezastream reads aiohttp's private attributes (the zero-copy body, the keep-alive and header
    timers) and calls redis-py's connections and pools directly (the batcher). With the oldest
    version pyproject.toml accepts, the tests of those still pass. With `aiohttp>=3.9` declared,
    the import itself failed (web.RequestKey came in 3.14), and up to 3.14.3 a connection did not
    go on after a body read straight into buffers; with `redis>=5.0`, every command failed
    (5.0's pools took a command name)."""
    oldest = _declared_minimum(package)
    venv.create(tmp_path / "venv", with_pip=True)
    py = tmp_path / "venv" / "bin" / "python"
    done = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", f"{package}=={oldest}"],
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    # Everything else from this environment, after the venv's own package; vezastream from this tree.
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    ours = _run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    (Path(site.stdout.strip()) / "outer.pth").write_text(f"import site; site.addsitedir({ours.stdout.strip()!r})\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(py), "-c", f"import {package}; print({package}.__version__)"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == oldest, done.stdout + done.stderr
    done = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *LOWER_BOUNDS[package]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
