"""``python -m fedshare``: the same as the ``fedshare`` console script."""

import sys

from fedshare.cli import main

sys.exit(main())
