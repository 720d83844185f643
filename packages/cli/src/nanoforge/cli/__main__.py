"""``python -m nanoforge.cli`` is the same as the ``nanoforge`` command."""

import sys

from nanoforge.cli.main import main

sys.exit(main())
