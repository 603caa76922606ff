"""The ``customer-ai`` command line (:func:`main`); each command lives in its own module."""

from stream.cli.main import main
from stream.cli.program import console_main

__all__ = ["console_main", "main"]
