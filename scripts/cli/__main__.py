"""``python -m scripts.cli``: the ``zmpexec`` command."""

import sys

from scripts.cli.main import main

sys.exit(main())
