"""``python -m taskcast``: the ``taskcast`` command, where the script is not on PATH."""

import sys

from taskcast.cli.main import main

sys.exit(main())
