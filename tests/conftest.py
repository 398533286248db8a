"""Shared fixtures come from the plugin author kit, :mod:`vezastream.testing`
(a pytest plugin loaded through its ``pytest11`` entry point): a real
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
