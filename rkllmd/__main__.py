"""``python -m rkllmd``: the same as the ``rkllmd`` command."""

import sys

from rkllmd.cli import main

sys.exit(main())
