"""``python -m sparselib ...``: the same as the ``sparselib`` command (see :mod:`sparselib.cli`)."""
import sys

from .cli import main

sys.exit(main())
