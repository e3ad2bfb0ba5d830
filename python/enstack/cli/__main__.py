"""``python -m enstack.cli ...``: the ``enstack`` command (as ``python -m enstack``)."""

import sys

from enstack.cli import main

sys.exit(main())
