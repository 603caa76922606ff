"""``python -m stream.cli``: the same as the ``customer-ai`` command."""

from stream.cli.program import console_main

console_main()
