"""Shared fixtures come from the plugin author kit, :mod:`vezastream.testing`
(a pytest plugin loaded through its ``pytest11`` entry point): a real
redis-server (``redis_url``), ``make_settings``, ``settings``, ``make_client``,
``client``. Our own tests use exactly what plugin authors get.
"""
