"""vezastream: resumable, chunked, high-concurrency HTTP uploads."""

from .hookspecs import hookimpl

__all__ = ["hookimpl", "__version__"]
__version__ = "0.1.0"
