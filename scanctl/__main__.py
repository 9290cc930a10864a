"""``python -m scanctl``: the same as the ``scanctl`` command."""

import sys

from scanctl.cli import main

sys.exit(main())
