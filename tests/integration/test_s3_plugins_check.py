"""``vezastream plugins --check`` with the S3 sink, as an operator runs it (the real command, a real
moto server on 127.0.0.1): docs/configuration.md says it lists the ``staging`` capability that
``storage.staging = "sink"`` needs, and docs/storage.md that it builds the configured sink, lists
its capabilities and runs its check."""

from __future__ import annotations

import json
from pathlib import Path

from servers import free_port, run


def config(tmp_path: Path, endpoint: str, bucket_name: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nsink = "s3"\n'
                    f'[sinks.s3]\nbucket = "{bucket_name}"\nendpoint_url = "{endpoint}"\n'
                    'addressing_style = "path"\n')
    return path


def test_check_lists_the_s3_sinks_capabilities_staging_included(tmp_path, s3_server, bucket):
    done = run(["--config", str(config(tmp_path, s3_server.endpoint, bucket)), "plugins", "--check"], {}, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "configured sink: s3 (capabilities: content, remove, abort, direct, sweep, staging)" in lines, lines
    assert "sink check: ok" in lines


def test_check_fails_when_the_bucket_is_not_there(tmp_path, s3_server):
    done = run(["--config", str(config(tmp_path, s3_server.endpoint, "vz-no-such-bucket")), "plugins", "--check"],
               {}, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("configured sink: s3 (capabilities: ") and "staging" in line for line in lines)
    assert any(line.startswith("sink check failed: ") for line in lines), lines
    # Without --check the sink is not built (nor the bucket asked): no capabilities, no check.
    done = run(["--config", str(config(tmp_path, s3_server.endpoint, "vz-no-such-bucket")), "plugins"], {}, tmp_path)
    assert done.returncode == 0 and "capabilities:" not in done.stdout and "sink check" not in done.stdout


def test_check_of_an_unreachable_s3_writes_its_failed_calls_as_log_lines(tmp_path, aws_env):
    """Besides its own line, the check printed a bare "S3 call failed" on stderr: the sink's log
    record, written by Python's last-resort handler. The command logs as `serve` does."""
    port = free_port()
    path = config(tmp_path, f"http://127.0.0.1:{port}", "vz-nowhere")  # nothing listens there
    path.write_text(path.read_text() + "retry_attempts = 2\nretry_base_delay = 0.01\nconnect_timeout = 1\n")
    done = run(["--config", str(path), "plugins", "--check"], {}, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert any(line.startswith("sink check failed: ") for line in done.stdout.splitlines()), done.stdout
    logged = [json.loads(line) for line in done.stderr.splitlines()]  # each line one JSON object (log.format)
    (failed,) = [line for line in logged if line["msg"] == "S3 call failed"]
    assert (failed["level"], failed["event"], failed["call"]) == ("warning", "sink_error", "HeadBucket"), failed
    # The kind and the library's message, which names the endpoint (docs/operations.md); the check's
    # own line and the 503 it stands for do not.
    assert failed["kind"] and f"127.0.0.1:{port}" in failed["error"] and len(failed["error"]) <= 300, failed
    assert f"127.0.0.1:{port}" not in done.stdout, done.stdout
