"""A plugin's ``[plugins.<name>]`` table, from config.toml and the environment, reaches its
configure hook (docs/plugins.md, "Configuring plugins"): without the host's ``enabled`` key,
with ``VEZASTREAM_PLUGINS__<NAME>__<KEY>`` overriding the file, and an environment
``ENABLED=false`` keeps the plugin out. Real app, real Redis; the settings are read by
``load_settings`` from a real file, as ``vezastream serve`` reads them.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from vezastream import hookimpl
from vezastream.config import load_settings
from vezastream.testing import configured_plugin, create

from helpers import Quota

CONFIG = """
[plugins.quota]
enabled = true
max_size = 50
owners = ["alice"]
"""


class QuotaPlugin:
    """Records every table its configure hook is handed."""

    def __init__(self) -> None:
        self.tables: list[dict] = []

    @hookimpl
    def vezastream_configure_plugin(self, config):
        self.tables.append(dict(config))
        return Quota(config.get("max_size", 10))


def _settings(tmp_path: Path, redis_url: str, environ: dict[str, str], text: str = CONFIG):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_settings(path, environ=environ, overrides={
        "storage.data_dir": str(tmp_path / "data"), "redis.url": redis_url,
        "redis.key_prefix": "t" + secrets.token_hex(4), "limits.min_chunk_size": 1, "gc.enabled": False,
        "log.format": "text"})


async def test_the_table_reaches_the_plugin_without_enabled_and_with_the_environment_s_overrides(
        tmp_path, redis_url, make_client):
    plugin = QuotaPlugin()
    environ = {"VEZASTREAM_PLUGINS__QUOTA__MAX_SIZE": "100",          # overrides the file's 50
               "VEZASTREAM_PLUGINS__QUOTA__LABEL": "from-env",        # a key only the environment has
               "VEZASTREAM_PLUGINS__QUOTA__TAGS": '["a", "b"]'}       # a TOML value
    client = await make_client(_settings(tmp_path, redis_url, environ), plugins=[("quota", plugin)])
    assert plugin.tables == [{"max_size": 100, "owners": ["alice"], "label": "from-env", "tags": ["a", "b"]}]
    assert configured_plugin(client, "quota").max_size == 100
    await create(client, total_size=100)
    problem = await create(client, total_size=101, expect=413)
    assert problem["plugin"] == "quota" and problem["detail"] == "this server takes files up to 100 bytes"


async def test_an_absent_table_is_an_empty_dict(tmp_path, redis_url, make_client):
    plugin = QuotaPlugin()
    await make_client(_settings(tmp_path, redis_url, {}, text=""), plugins=[("quota", plugin)])
    assert plugin.tables == [{}]


async def test_the_environment_disables_a_plugin(tmp_path, redis_url, make_client):
    plugin = QuotaPlugin()
    client = await make_client(_settings(tmp_path, redis_url, {"VEZASTREAM_PLUGINS__QUOTA__ENABLED": "false"}),
                               plugins=[("quota", plugin)])
    assert plugin.tables == [] and configured_plugin(client, "quota") is None
    await create(client, total_size=1000)  # the quota of the file (50) is not applied
