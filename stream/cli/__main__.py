"""``python -m stream.cli``: the same as the ``customer-ai`` command."""

import sys

from stream.cli.main import main

sys.exit(main())
