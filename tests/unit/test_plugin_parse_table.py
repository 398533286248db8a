"""``parse_table``, the SDK's reader of a plugin's table (docs/plugins.md, "Reading a table").

Each key is checked against its field's type (``str``, ``int``, ``float`` taking an integer,
``bool``, ``Size``, ``Path``, ``tuple[str, ...]``), absent keys keep their defaults, and an
unknown key or a wrong type raises ``ConfigError`` naming ``<prefix>.<key>``; a check in
``__post_init__`` raises its own ``ConfigError``. At startup, whatever a configure hook
raises stops the app with one line naming the plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vezastream import ConfigError, MiB, Size, hookimpl, parse_size, parse_table
from vezastream.plugins import make_plugin_manager
from vezastream.config import load_settings


@dataclass(frozen=True)
class QuotaConfig:
    label: str = "quota"
    retries: int = 3
    ratio: float = 0.5
    strict: bool = False
    max_size: Size = Size(100 * MiB)
    root: Path = Path("/var/lib/quota")
    owners: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ConfigError("plugins.quota.max_size: must be at least 1 byte")


def test_absent_keys_keep_their_defaults():
    assert parse_table(QuotaConfig, {}, "plugins.quota") == QuotaConfig()


def test_each_field_type_is_read():
    config = parse_table(QuotaConfig, {"label": "q", "retries": 5, "ratio": 2, "strict": True,
                                       "max_size": "1MiB", "root": "/srv/q", "owners": ["alice", "bob"]},
                         "plugins.quota")
    assert config == QuotaConfig("q", 5, 2.0, True, Size(MiB), Path("/srv/q"), ("alice", "bob"))
    assert type(config.ratio) is float and isinstance(config.max_size, Size)
    assert isinstance(config.root, Path) and type(config.owners) is tuple


@pytest.mark.parametrize("value, size", [(1048576, 1048576), ("1MiB", MiB), ("64 MB", 64 * 1000**2),
                                         ("2 GiB", 2 * 1024**3), ("512KiB", 512 * 1024)])
def test_a_size_is_a_byte_count_or_a_string_with_a_unit(value, size):
    assert parse_table(QuotaConfig, {"max_size": value}, "plugins.quota").max_size == size


@pytest.mark.parametrize("value, size", [(1048576, 1048576), ("1MiB", MiB), ("64 MB", 64 * 1000**2)])
def test_parse_size_reads_one_size_the_same_way_and_names_its_key_when_it_cannot(value, size):
    """docs/plugins.md: ``parse_size(value, key)``, the SDK's reader of one size."""
    assert parse_size(value, "plugins.quota.cap") == size
    with pytest.raises(ConfigError, match=r"^plugins.quota.cap: expected a size"):
        parse_size(f"{value} parsecs", "plugins.quota.cap")


@pytest.mark.parametrize("key, value", [
    ("label", 1),
    ("retries", "3"), ("retries", True), ("retries", 2.5),
    ("ratio", "0.5"), ("ratio", False),
    ("strict", "yes"), ("strict", 1),
    ("max_size", "lots"), ("max_size", True), ("max_size", 1.5),
    ("root", 7), ("root", ""),
    ("owners", "alice"), ("owners", ["alice", 2]),
])
def test_a_wrong_type_is_a_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        parse_table(QuotaConfig, {key: value}, "plugins.quota")
    assert str(info.value).startswith(f"plugins.quota.{key}: expected"), str(info.value)
    assert repr(value) in str(info.value)


def test_an_unknown_key_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"^sinks\.sharded\.colour: unknown setting$"):
        parse_table(QuotaConfig, {"retries": 1, "colour": "blue"}, "sinks.sharded")


def test_post_init_checks_raise_their_own_config_error():
    with pytest.raises(ConfigError, match=r"^plugins\.quota\.max_size: must be at least 1 byte$"):
        parse_table(QuotaConfig, {"max_size": 0}, "plugins.quota")


def test_parse_table_needs_a_dataclass():
    with pytest.raises(TypeError, match="parse_table needs a dataclass"):
        parse_table(dict, {}, "plugins.quota")


@dataclass(frozen=True)
class Required:
    url: str
    timeout: float = 5.0


def test_a_missing_required_key_is_a_config_error_naming_it():
    # It was a TypeError from the dataclass's constructor, which named no table.
    with pytest.raises(ConfigError, match=r"^plugins\.hook\.url: required setting missing$"):
        parse_table(Required, {"timeout": 1}, "plugins.hook")
    assert parse_table(Required, {"url": "https://x"}, "plugins.hook") == Required("https://x")


class WebhookPlugin:
    @hookimpl
    def vezastream_configure_plugin(self, config):
        return parse_table(Required, config, "plugins.hook")


@pytest.mark.parametrize("table, message", [
    ({"timeout": 1}, "plugin 'hook': bad configuration: plugins.hook.url: required setting missing"),
    ({"url": "https://x", "timeout": "soon"}, "plugin 'hook': bad configuration: plugins.hook.timeout: expected"),
    ({"url": "https://x", "retries": 2}, "plugin 'hook': bad configuration: plugins.hook.retries: unknown setting"),
])
def test_at_startup_a_table_parse_table_refuses_stops_the_app_naming_the_plugin(table, message, tmp_path):
    settings = load_settings(None, environ={}, overrides={
        "storage.data_dir": str(tmp_path), **{f"plugins.hook.{k}": v for k, v in table.items()}})
    with pytest.raises(ConfigError) as info:
        make_plugin_manager([("hook", WebhookPlugin())], load_entry_points=False, settings=settings)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
