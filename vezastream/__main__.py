"""``python -m vezastream``: the same command as ``vezastream``."""

import sys

from .cli import main

sys.exit(main())
