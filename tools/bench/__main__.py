"""``python -m tools.bench``: the export benchmark (``make bench``); see :mod:`tools.bench.run`."""

import sys

from tools.bench.run import main

sys.exit(main())
