"""Installing vezastream is safe: a fresh venv with vezastream and pytest, nothing else.

The package must not change how an unrelated pytest run behaves (the plugin author
kit is opt-in), must run as ``python -m vezastream`` and answer ``--version``, and
must ship ``py.typed`` for plugin authors' type checkers.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

import vezastream

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new venv holding vezastream (without its dependencies or extras) and pytest."""
    root = tmp_path_factory.mktemp("fresh")
    venv.create(root / "venv", with_pip=True)
    py = root / "venv" / "bin" / "python"
    done = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)], cwd=root)
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


@pytest.mark.slow
def test_the_installed_package_ships_py_typed(fresh_venv, tmp_path):
    done = _run([str(fresh_venv), "-c", "import importlib.util, pathlib; "
                 "spec = importlib.util.find_spec('vezastream'); "
                 "print((pathlib.Path(spec.origin).parent / 'py.typed').exists())"], cwd=tmp_path)
    assert done.stdout.strip() == "True", done.stderr


def test_python_dash_m_and_version():
    done = _run([sys.executable, "-m", "vezastream", "--version"], cwd=ROOT, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"vezastream {vezastream.__version__}"


def test_help_texts_are_plain_text():
    for args in (["--help"], ["serve", "--help"], ["gc", "--help"], ["config", "show", "--help"]):
        done = _run([sys.executable, "-m", "vezastream", *args], cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "``" not in done.stdout and ":func:" not in done.stdout and ":class:" not in done.stdout


@pytest.mark.slow
def test_the_installed_package_ships_the_uploader_page(fresh_venv, tmp_path):
    done = _run([str(fresh_venv), "-c", "import importlib.util, pathlib; "
                 "ui = pathlib.Path(importlib.util.find_spec('vezastream').origin).parent / 'http' / 'ui'; "
                 "print(sorted(p.name for p in ui.iterdir() if p.suffix in ('.html', '.js', '.css')))"], cwd=tmp_path)
    assert done.stdout.strip() == "['index.html', 'uploader.css', 'uploader.js']", done.stderr
