"""Discovery through the ``vezastream`` entry-point group, enable/disable, and broken plugins.

Each test installs a throwaway distribution (a ``.dist-info`` folder and a
module) on ``sys.path``, exactly what pip leaves behind, so the real
``importlib.metadata`` discovery runs.
"""

from __future__ import annotations

import secrets
import sys
import textwrap
from pathlib import Path

import pytest

from vezastream import cli
from vezastream.config import ConfigError
from vezastream.plugins import describe, make_plugin_manager

GOOD = '''
from vezastream import hookimpl

@hookimpl
def vezastream_observe_expiry(upload_id):
    pass

@hookimpl
def vezastream_configure_plugin(config):
    if config.get("level", 1) not in (1, 2):
        raise ValueError("plugins.{name}.level must be 1 or 2")
'''


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``install(entry_name, source, version)``: a distribution exposing one plugin module."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    added: list[str] = []

    def make(name: str, source: str, version: str = "1.2.3") -> str:
        module = f"vz_fake_{name}_{secrets.token_hex(4)}"
        dist = f"vezastream_fake_{name}"
        (site / f"{module}.py").write_text(textwrap.dedent(source.replace("{name}", name)))
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[vezastream]\n{name} = {module}\n")
        added.append(module)
        return module

    yield make
    for module in added:
        sys.modules.pop(module, None)


def test_installed_plugin_is_found_listed_and_configured(install, make_settings):
    install("fake", GOOD, version="2.0.1")
    pm = make_plugin_manager(settings=make_settings(**{"plugins.fake.level": 2}))
    info = {p.name: p for p in describe(pm)}
    assert info["fake"].version == "2.0.1" and info["fake"].enabled
    assert info["fake"].hooks == ["vezastream_configure_plugin", "vezastream_observe_expiry"]
    assert info["local"].hooks == ["vezastream_register_sinks"]


@pytest.mark.parametrize("source, expected", [
    ("import not_a_module_anywhere\n", "plugin 'broken' failed to load: ModuleNotFoundError"),
    ("from vezastream import hookimpl\n@hookimpl\ndef vezastream_observe_expiry(upload_id, extra):\n    pass\n",
     "plugin 'broken': Plugin 'broken' for hook 'vezastream_observe_expiry'"),
    ("from vezastream import hookimpl\n@hookimpl\ndef vezastream_observe_expiri(upload_id):\n    pass\n",
     "plugin 'broken': unknown hook 'vezastream_observe_expiri'"),
    ("from vezastream import hookimpl\n@hookimpl\nasync def vezastream_register_sinks(register):\n    pass\n",
     "plugin 'broken': vezastream_register_sinks must be a plain function, not async"),
    ("from vezastream import hookimpl\n@hookimpl(wrapper=True)\ndef vezastream_validate_upload():\n"
     "    return (yield)\n", "plugin 'broken': vezastream_validate_upload may not be a wrapper"),
    ("from vezastream import hookimpl\n@hookimpl(hookwrapper=True)\ndef vezastream_validate_upload():\n"
     "    yield\n", "plugin 'broken': vezastream_validate_upload may not be a wrapper"),
    (GOOD, "plugin 'broken': bad configuration: ValueError: plugins.broken.level must be 1 or 2"),
])
def test_a_broken_plugin_stops_startup_with_one_line_naming_it(install, make_settings, source, expected):
    install("broken", source)
    settings = make_settings(**{"plugins.broken.level": 3})
    with pytest.raises(ConfigError) as info:
        make_plugin_manager(settings=settings)
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_a_disabled_plugin_is_never_imported(install, make_settings):
    module = install("broken", "raise RuntimeError('imported!')\n")
    pm = make_plugin_manager(settings=make_settings(**{"plugins.broken.enabled": False}))
    assert module not in sys.modules
    assert [(p.name, p.enabled) for p in describe(pm) if p.name == "broken"] == [("broken", False)]


def test_disabling_the_builtin_sink_leaves_no_sink(make_settings):
    from vezastream.http.app import create_app

    with pytest.raises(ConfigError, match=r"storage.sink: unknown sink 'local' \(registered: ") as info:
        create_app(make_settings(**{"plugins.local.enabled": False}))
    assert "local" not in str(info.value).split("registered:")[1]


def test_cli_plugins_lists_versions_hooks_and_disabled(install, tmp_path: Path, capsys, monkeypatch):
    install("fake", GOOD, version="0.9.0")
    install("off", "raise RuntimeError('imported!')\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                      "[plugins.fake]\nlevel = 2\n[plugins.off]\nenabled = false\n")
    monkeypatch.setattr(sys, "argv", ["vezastream"])
    assert cli.main(["--config", str(config), "plugins", "--check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "fake 0.9.0: vezastream_configure_plugin, vezastream_observe_expiry" in out
    assert "off 1.2.3: (disabled)" in out
    assert any(line.startswith("local ") and "vezastream_register_sinks" in line for line in out)
    assert "configured sink: local (capabilities: content, remove)" in out
    assert "sink check: ok" in out


SPY_SINK = '''
from pathlib import Path
from vezastream import hookimpl

class Spy:
    name = "spy"
    async def assemble(self, upload, source): ...
    async def check(self):
        raise OSError("the bucket is not there")
    async def aclose(self): ...

@hookimpl
def vezastream_register_sinks(register):
    def make(config, settings):
        Path(config["marker"]).write_text("factory ran")
        return Spy()
    register("spy", make)
'''


def test_cli_plugins_builds_the_sink_only_with_check(install, tmp_path: Path, capsys):
    install("spy", SPY_SINK)
    marker = tmp_path / "factory-ran"
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nsink = "spy"\n'
                      f'[sinks.spy]\nmarker = "{marker}"\n')
    assert cli.main(["--config", str(config), "plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not marker.exists(), "vezastream plugins called the sink factory without --check"
    assert "sinks: local, s3, spy" in out and any(line.startswith("configured sink: spy (--check") for line in out)
    assert cli.main(["--config", str(config), "plugins", "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert marker.exists() and "configured sink: spy (capabilities: none)" in out
    assert "sink check failed: OSError: the bucket is not there" in out


def test_a_sink_factory_that_crashes_stops_startup_naming_the_sink(install, make_settings):
    from vezastream.http.app import create_app

    install("crashy", "from vezastream import hookimpl\n@hookimpl\ndef vezastream_register_sinks(register):\n"
                      "    register('crashy', lambda config, settings: 1 / 0)\n")
    with pytest.raises(ConfigError, match=r"^storage.sink: sink 'crashy' could not be built: ZeroDivisionError"):
        create_app(make_settings(**{"storage.sink": "crashy"}))


def test_cli_prints_one_line_for_a_broken_plugin(install, tmp_path: Path, capsys):
    install("broken", "import not_a_module_anywhere\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    assert cli.main(["--config", str(config), "plugins"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plugin 'broken' failed to load" in err


def test_a_sinks_table_that_names_no_registered_sink_is_said_at_start(make_settings, caplog):
    """A typo in a sink's table name (``[sinks.locla]``) left the local sink on its defaults without a word."""
    from vezastream.http.app import create_app

    create_app(make_settings(**{"sinks.locla.directory": "/srv/files"}))
    (said,) = [r for r in caplog.records if getattr(r, "event", None) == "unknown_sink_table"]
    assert said.levelname == "WARNING" and said.table == "sinks.locla" and "local" in said.registered.split(", ")
