"""``[sinks.s3]`` values of the wrong type are refused naming the key and the value, and the
plugin's ``S3Sink`` is importable by name though the package loads without aiobotocore."""

from __future__ import annotations

from pathlib import Path

import pytest

import vezastream_s3
from servers import run
from vezastream.config import ConfigError
from vezastream_s3.settings import parse_settings


@pytest.mark.parametrize("key, value, problem", [
    ("retry_base_delay", "fast", "expected a number of seconds, got 'fast'"),
    ("read_timeout", True, "expected a number of seconds, got True"),  # TOML's true is no number of seconds
    ("parts_in_flight", 2.5, "expected an integer, got 2.5"),
    ("presign_expiry", False, "expected an integer, got False"),
    ("region", 5, "expected a string, got 5"),
    ("content", ["proxy"], "expected a string, got \\['proxy'\\]"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_value(key, value, problem):
    with pytest.raises(ConfigError, match=f"^sinks.s3.{key}: {problem}$"):
        parse_settings({"bucket": "ok-bucket", key: value})


def test_the_refusal_reaches_the_operator_of_plugins_check(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nsink = "s3"\n'
                      '[sinks.s3]\nbucket = "ok-bucket"\nparts_in_flight = true\n')
    done = run(["--config", str(config), "plugins", "--check"], {}, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "config error: sinks.s3.parts_in_flight: expected an integer, got True" in done.stderr


def test_s3sink_is_importable_by_name_and_other_names_are_not():
    from vezastream_s3 import S3Sink
    from vezastream_s3.sink import S3Sink as defined

    assert S3Sink is defined
    assert not hasattr(vezastream_s3, "S3Client")
    with pytest.raises(ImportError):
        from vezastream_s3 import Nope  # noqa: F401
