"""config.toml is the reference for every setting: it must match config.py, and docs/configuration.md must match both."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from vezastream.config import ConfigError, Settings, load_settings, public_view

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG = ROOT / "config.toml"
DOC = ROOT / "docs" / "configuration.md"


def sections() -> dict[str, set[str]]:
    """Each settings table (a dataclass field of Settings) and its keys."""
    found = {}
    for section in dataclasses.fields(Settings):
        default = section.default_factory() if section.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            found[section.name] = {key.name for key in dataclasses.fields(default)}
    return found


def documented_plugin_keys(table: str) -> set[str]:
    """The keys config.toml shows (commented out) in ``[<table>]``, e.g. ``sinks.s3``."""
    text = CONFIG.read_text()
    start = re.search(rf"^#? ?\[{re.escape(table)}\]$", text, re.MULTILINE)
    if start is None:
        return set()
    block = re.split(r"^#? ?\[", text[start.end():], maxsplit=1, flags=re.MULTILINE)[0]
    return set(re.findall(r"^#\s*([a-z_]+) = ", block, re.MULTILINE))


def test_config_toml_holds_every_setting_and_nothing_else():
    table = tomllib.loads(CONFIG.read_text())
    for name, keys in sections().items():
        assert name in table, f"[{name}] is missing from config.toml"
        assert set(table[name]) == keys, (f"[{name}]: missing {sorted(keys - set(table[name]))}, "
                                          f"unknown {sorted(set(table[name]) - keys)}")
    extra = set(table) - set(sections()) - {"sinks", "plugins"}
    assert not extra, f"config.toml has tables no setting reads: {sorted(extra)}"


@pytest.mark.parametrize("section", sorted(sections()))
def test_config_toml_shows_the_defaults(section):
    """What config.toml says is what an empty configuration means (paths as written)."""
    from_file = public_view(load_settings(CONFIG, environ={}))[section]
    defaults = public_view(load_settings(None, environ={}))[section]
    assert from_file == defaults


def test_every_key_the_configuration_page_names_exists():
    text = DOC.read_text()
    named = set()
    for quoted in re.findall(r"`([^`]*)`", text):
        named |= set(re.findall(r"\b([a-z]+)\.([a-z_]+)(?:\.([a-z_]+))?", quoted))
    env = {tuple(part.lower() for part in m) for m in re.findall(r"VEZASTREAM_([A-Z]+)__([A-Z_]+?)(?:__([A-Z_]+))?\b",
                                                                    text)}
    known = sections()
    checked = 0
    for section, key, sub in named | env:
        if section in known:
            assert key in known[section] and not sub, f"docs/configuration.md names {section}.{key}: no such setting"
            checked += 1
        elif section in ("sinks", "plugins") and sub:
            assert sub in documented_plugin_keys(f"{section}.{key}"), \
                f"docs/configuration.md names {section}.{key}.{sub}, which config.toml does not show"
            checked += 1
    assert checked >= 10  # the page names settings, and this test reads them


def test_environment_overrides_read_as_the_configuration_page_says():
    """configuration.md: a TOML value when the text is one, else a string; quotes force a string."""
    settings = load_settings(None, environ={
        "VEZASTREAM_SERVER__PORT": "9000",
        "VEZASTREAM_REDIS__KEY_PREFIX": '"123"',
        "VEZASTREAM_NATIVE__CORS_ORIGINS": '["https://app.example.com"]',
        "VEZASTREAM_SINKS__LOCAL__DIRECTORY": "/srv/media",
    })
    assert settings.server.port == 9000
    assert settings.redis.key_prefix == "123"
    assert list(settings.native.cors_origins) == ["https://app.example.com"]
    assert public_view(settings)["sinks"]["local"]["directory"] == "/srv/media"
    with pytest.raises(ConfigError, match="redis.key_prefix"):  # 123 unquoted is a number
        load_settings(None, environ={"VEZASTREAM_REDIS__KEY_PREFIX": "123"})


def test_the_default_drain_fits_the_supervisors_grace_with_the_margin_the_docs_ask_for():
    """operations.md: keep server.shutdown_timeout 10 s or more under the supervisor's wait before it
    kills (a stop takes the drain plus a few seconds). The default does so under Kubernetes' default
    terminationGracePeriodSeconds (30 s), and so does the Kubernetes example's setting."""
    drain = Settings().server.shutdown_timeout
    example = re.search(r"terminationGracePeriodSeconds: (\d+)", (ROOT / "docs" / "operations.md").read_text())
    assert example is not None
    assert drain + 10 <= 30 and drain + 10 <= int(example.group(1))
    for page in ("configuration.md", "operations.md"):  # and the default they state is the default
        stated = re.findall(r"shutdown_timeout`?\s+(?:seconds\s+)?\((\d+)(?:\s+s\)|\s+by\s+default\))",
                            (ROOT / "docs" / page).read_text())
        assert stated and {float(n) for n in stated} == {drain}, (page, stated)
