"""The ``customer-ai`` program as a process: :func:`console_main`, and how a command
leaves its memory to the end of the process (:func:`leave_to_exit`).

Python frees an object graph one object at a time: ``evaluate``'s backtest (millions of
objects on a purchase log) took a third of a second of a seven-second run to free. A
command that calls :func:`leave_to_exit` has the process end as soon as its output is
flushed, and the operating system takes the memory back at once. A command called
in-process (a test calling its function) frees its objects as usual.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn

__all__ = ["console_main", "leave_to_exit", "left_to_exit"]

#: what commands left for the end of the process to free (:func:`leave_to_exit`); None
#: unless the commands run as the ``customer-ai`` process (:func:`console_main`)
_left_to_exit: list[object] | None = None


def leave_to_exit(obj: object) -> None:
    """Leave ``obj``, with all it holds, for the end of the process to free (in-process,
    outside :func:`console_main`: nothing is kept)."""
    if _left_to_exit is not None:
        _left_to_exit.append(obj)


def left_to_exit() -> bool:
    """Whether a command left objects for the end of the process (:func:`leave_to_exit`)."""
    return bool(_left_to_exit)


def console_main() -> NoReturn:
    """The ``customer-ai`` program (and ``python -m stream.cli``):
    :func:`stream.cli.main.main`, then the end of the process.

    After a command that left its objects to the end of the process (``evaluate``'s
    backtest) the process ends as soon as its output is flushed, without Python freeing
    them one by one; the files it wrote are closed by then. Other commands exit as usual
    (``atexit`` handlers run, such as the one that stops ``dev up``'s servers).
    """
    global _left_to_exit
    _left_to_exit = []
    status = importlib.import_module("stream.cli.main").main()
    if left_to_exit():
        sys.stdout.flush()
        sys.stderr.flush()
        # os._exit is public and documented (an exit that skips the interpreter's
        # clean-up), despite its underscore
        os._exit(status)
    sys.exit(status)
