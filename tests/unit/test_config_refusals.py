"""How ``vezastream`` refuses a configuration it cannot use (docs/configuration.md): one line on
stderr naming the file, setting or variable, exit status 2, never a traceback, never a secret.

The commands run in-process (``vezastream.cli.main``), as ``vezastream config show`` would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vezastream.cli import main


def _refusal(capsys, *argv: str) -> str:
    """The one stderr line of a refused ``vezastream <argv>``, once checked it exits 2."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured
    assert lines[0].startswith("vezastream: config error: ")
    return lines[0].removeprefix("vezastream: config error: ")


@pytest.fixture
def in_folder(tmp_path: Path, monkeypatch) -> Path:
    """The test's folder as the working directory, and no VEZASTREAM_* variables from outside."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("VEZASTREAM_")]:
        monkeypatch.delenv(name)
    return tmp_path


def test_a_missing_config_file_is_named(in_folder, capsys):
    assert _refusal(capsys, "config", "show", "--config", "nowhere.toml") == "nowhere.toml: no such config file"


def test_a_config_path_that_is_a_folder_is_named(in_folder, capsys):
    (in_folder / "conf.d").mkdir()
    line = _refusal(capsys, "config", "show", "--config", "conf.d")
    assert line == "conf.d: cannot read the config file (Is a directory)"


def test_a_config_file_that_is_not_toml_is_named_with_the_parsers_reason(in_folder, capsys):
    (in_folder / "bad.toml").write_text("[server\nport = 1\n")
    line = _refusal(capsys, "config", "show", "--config", "bad.toml")
    assert line.startswith("bad.toml: not valid TOML (") and "line 1" in line


def test_a_config_file_not_in_utf8_is_named_with_where_it_is_not(in_folder, capsys):
    """Saved in Latin-1 or Windows-1252 (an accent in a comment): a traceback from tomllib's decoding
    before (UnicodeDecodeError). TOML is UTF-8: the line says so, and where."""
    (in_folder / "latin.toml").write_bytes("# café\n[server]\nport = 8123\n".encode("latin-1"))
    line = _refusal(capsys, "config", "show", "--config", "latin.toml")
    assert line == "latin.toml: not UTF-8 (byte 0xe9 at line 1, column 6): TOML files are UTF-8; save it as such"


def test_a_config_file_saved_with_a_byte_order_mark_is_read(in_folder, capsys):
    """Windows' Notepad may start a UTF-8 file with a byte order mark, which tomllib refuses ("Invalid
    statement at line 1, column 1", which names nothing one can see): it is skipped."""
    (in_folder / "config.toml").write_bytes(b"\xef\xbb\xbf[server]\nport = 8123\n")
    assert main(["config", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["server"]["port"] == 8123


def test_config_toml_in_the_working_folder_is_read_without_config(in_folder, capsys):
    (in_folder / "config.toml").write_text("[server]\nport = 8123\n")
    assert main(["config", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["server"]["port"] == 8123


@pytest.mark.parametrize("toml,message", [
    ("server = 5\n", "server: expected a table, got 5"),
    ("[sinks]\nlocal = 3\n", "sinks: expected tables"),
    ("plugins = 3\n", "plugins: expected tables"),
], ids=["section-not-a-table", "sink-not-a-table", "plugins-not-a-table"])
def test_a_value_where_a_table_belongs_is_refused(in_folder, capsys, toml, message):
    (in_folder / "config.toml").write_text(toml)
    assert _refusal(capsys, "config", "show") == message


def test_a_variable_below_a_setting_that_is_not_a_table_is_refused(in_folder, capsys, monkeypatch):
    (in_folder / "config.toml").write_text("[server]\nport = 8123\n")
    monkeypatch.setenv("VEZASTREAM_SERVER__PORT__NUMBER", "1")
    assert _refusal(capsys, "config", "show") == "VEZASTREAM_SERVER__PORT__NUMBER: port is not a table"


def test_a_token_list_without_users_is_refused_without_showing_the_token(in_folder, capsys, monkeypatch):
    monkeypatch.setenv("VZ_TEST_TOKENS", "tok=alice,hunter2secret")
    monkeypatch.setenv("VEZASTREAM_AUTH__MODE", "token")
    monkeypatch.setenv("VEZASTREAM_AUTH__TOKENS_ENV", "VZ_TEST_TOKENS")
    line = _refusal(capsys, "config", "show")
    assert line == "VZ_TEST_TOKENS: expected token=user pairs, got hunt…"


def test_a_token_listed_for_two_users_is_refused_naming_the_users_not_the_token(in_folder, capsys, monkeypatch):
    """It was taken without a word, the last pair winning: alice's client would have been bob."""
    monkeypatch.setenv("VZ_TEST_TOKENS", "tok-a=alice,tok-b=carol,tok-a=bob,tok-b=carol")
    monkeypatch.setenv("VEZASTREAM_AUTH__MODE", "token")
    monkeypatch.setenv("VEZASTREAM_AUTH__TOKENS_ENV", "VZ_TEST_TOKENS")
    line = _refusal(capsys, "config", "show")
    assert line == "VZ_TEST_TOKENS: one token is listed for two users, alice and bob" and "tok-" not in line


@pytest.mark.parametrize("name, meant", [("VEZASTREAM_SERVER_PORT", "VEZASTREAM_SERVER__PORT"),
                                         ("VEZASTREAM_STORAGE_DATA_DIR", "VEZASTREAM_STORAGE__DATA_DIR")])
def test_a_variable_with_one_underscore_where_two_belong_is_named_with_the_right_one(in_folder, capsys,
                                                                                      monkeypatch, name, meant):
    """Before, it was passed over without a word: the server ran on its default port."""
    monkeypatch.setenv(name, "9000")
    setting = meant.removeprefix("VEZASTREAM_").lower().replace("__", ".")
    assert _refusal(capsys, "config", "show") == f"{name}: not a setting; {setting} is set by {meant} (two underscores)"


def test_variables_of_ours_that_are_not_settings_are_let_be(in_folder, capsys, monkeypatch):
    """The scripts' variables and secrets a setting names (``metrics.token_env``) are not settings."""
    for name in ("VEZASTREAM_VENV", "VEZASTREAM_EXTRAS", "VEZASTREAM_METRICS_TOKEN", "VEZASTREAM_WEBHOOK_SECRET"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("VEZASTREAM_SERVER__PORT", "9001")
    assert main(["config", "show"]) == 0
    assert '"port": 9001' in capsys.readouterr().out


def test_a_path_from_the_home_folder_of_no_known_user_is_refused(in_folder, capsys):
    (in_folder / "config.toml").write_text('[storage]\ndata_dir = "~no-such-user-vz/data"\n')
    assert _refusal(capsys, "config", "show") == (
        "storage.data_dir: '~no-such-user-vz/data' starts with ~ but that home folder is unknown")
