"""``python -m jupyter_agent``: the same command line as ``jupyter agent``."""

import sys

from .cli import main

sys.exit(main())
