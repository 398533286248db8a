"""Shared fixtures come from the plugin author kit, :mod:`vezastream.testing`
(a pytest plugin, enabled by ``-p vezastream.testing`` in pyproject.toml's addopts): a real
redis-server (``redis_url``), ``make_settings``, ``settings``, ``make_client``,
``client``. Our own tests use exactly what plugin authors get.
"""


import pytest  # noqa: E402


@pytest.fixture(params=[True, False], ids=["in-place", "chunk-files"])
def both_layouts(request, make_settings):
    """Settings for each native staging layout (``storage.in_place`` on, then off).

    A test module that must hold for both overrides ``settings`` with it.
    """
    return make_settings(**{"storage.in_place": request.param})


#: The name a drill's figures go under in its test's ``user_properties``.
DRILL_FIGURES = "drill figures"


@pytest.fixture
def report(request):
    """``report("crash", uploads=32, lost=0, recovery_s=1.8)``: a fault drill's figures.

    They are printed in a "drill figures" section at the end of the run, so CI's log
    holds what every drill measured whatever pytest captured. They travel in the test's
    ``user_properties``, which pytest-xdist's workers send back with their reports.
    """
    def report(drill: str, **values) -> None:
        request.node.user_properties.append((DRILL_FIGURES, (drill, values)))
    return report


class DrillFigures:
    """Gathers the drills' figures from the reports (this process's tests or xdist workers')."""

    def __init__(self) -> None:
        self.figures: list[tuple[str, dict]] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "teardown":
            self.figures += [value for name, value in report.user_properties if name == DRILL_FIGURES]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.figures:
            terminalreporter.section("drill figures")
            for drill, values in self.figures:
                terminalreporter.line(f"{drill}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def pytest_configure(config) -> None:
    config.pluginmanager.register(DrillFigures(), "drill-figures")


#: The modules whose tests take longest (each 15-75 s on the project's 2-core machine).
LONG_FIRST = ("tests/drills/", "tests/integration/test_redis_versions.py", "tests/integration/test_packaging.py",
              "tests/integration/test_bench.py", "tests/integration/test_plugin_author_journey.py",
              "tests/api/test_openapi.py", "tests/integration/test_redis_topologies.py")


def pytest_collection_modifyitems(items) -> None:
    """The long modules first, each whole and in its usual order: with a pytest-xdist worker per
    core (scripts/test), a long test that starts when the rest is nearly done is what the whole
    run waits for (the Redis 7 rerun did: 70 s at the end), while short ones fill the gaps."""
    items.sort(key=lambda item: not item.nodeid.startswith(LONG_FIRST))


from tests.redis_topologies import own_redis, redis_cluster, redis_sentinel  # noqa: E402,F401  (fixtures)
# The S3 servers' fixtures, here once: a session-scoped fixture imported into each test module would
# be a fixture of that module, and start a server of its own for each (21 moto servers in a run).
from s3_servers import (aws_env, bucket, moto_server, own_moto, s3, s3_server, sink_defaults,  # noqa: E402,F401
                        sink_settings, weed_server)
