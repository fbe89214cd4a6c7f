"""``python -m runtime.cli``: the ``torpor`` command."""

import sys

from . import main

sys.exit(main())
