"""``python -m tools.devserver ROOT ...``: see ``--help``."""

import sys

from tools.devserver.server import main

sys.exit(main())
