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


#: The figures fault drills report: (drill, figures), in the order they came.
drill_figures_key = pytest.StashKey[list]()


@pytest.fixture
def report(request):
    """``report("crash", uploads=32, lost=0, recovery_s=1.8)``: a fault drill's figures.

    They are printed in a "drill figures" section at the end of the run, so CI's log
    holds what every drill measured whatever pytest captured.
    """
    figures = request.config.stash.setdefault(drill_figures_key, [])

    def report(drill: str, **values) -> None:
        figures.append((drill, values))
    return report


def pytest_terminal_summary(terminalreporter, config) -> None:
    figures = config.stash.get(drill_figures_key, [])
    if figures:
        terminalreporter.section("drill figures")
        for drill, values in figures:
            terminalreporter.line(f"{drill}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


from tests.redis_topologies import redis_cluster, redis_sentinel  # noqa: E402,F401  (session fixtures)
