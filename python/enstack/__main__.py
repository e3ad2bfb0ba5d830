"""``python -m enstack ...``: the ``enstack`` command (e.g. under ``torchrun -m enstack``)."""

import sys

from enstack.cli import main

sys.exit(main())
