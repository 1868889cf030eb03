"""``python -m fedvlp.server.cli``: the ``fedvlp`` command."""

import sys

from .main import main

sys.exit(main())
