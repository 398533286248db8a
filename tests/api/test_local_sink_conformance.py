"""The built-in local sink passes the sink conformance suite of the author kit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vezastream.testing import SinkConformance


class TestLocalSink(SinkConformance):
    @pytest.fixture
    def sink_settings(self, tmp_path: Path) -> dict[str, object]:
        return {"storage.sink": "local", "sinks.local.directory": str(tmp_path / "files")}

    async def stored_objects(self, sink) -> set[str]:
        root = sink.directory
        return {str(Path(folder, name).relative_to(root))
                for folder, _, names in os.walk(root) for name in names}
