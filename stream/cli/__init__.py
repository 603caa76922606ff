"""The ``customer-ai`` command line (:func:`main`); each command lives in its own module."""

from stream.cli.main import main

__all__ = ["main"]
