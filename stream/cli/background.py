"""Run one task in a forked child process while the parent goes on with other work.

``customer-ai evaluate`` writes ``examples.csv`` this way: formatting hundreds of
thousands of rows is pure Python, and a forked child does it on the second core while
the parent builds the profile documents and the report. The child sees the parent's
memory as it was at the fork (copy on write): nothing is pickled or sent.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "out.txt"
>>> task = in_background(lambda: path.write_text("written by the child"), "out.txt")
>>> task.wait()
>>> path.read_text()
'written by the child'
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable

__all__ = ["BackgroundFailure", "BackgroundTask", "in_background"]


class BackgroundFailure(RuntimeError):
    """The task of a forked child failed (raised, or the child was killed).

    Parameters
    ----------
    message : str
        What the task was and how it failed, on one line (with the last line of the
        child's traceback when the task raised).
    child_traceback : str
        The child's traceback when the task raised, else ``""``.
    """

    def __init__(self, message: str, child_traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.child_traceback = child_traceback


class BackgroundTask:
    """A task running in a forked child process (:func:`in_background`).

    Parameters
    ----------
    pid : int
        The child's process id.
    errors : int
        The read end of the pipe the child writes its traceback to if the task raises.
    what : str
        What the task does, for the error message.
    """

    def __init__(self, pid: int, errors: int, what: str) -> None:
        self.pid = pid
        self.errors = errors
        self.what = what

    def wait(self) -> None:
        """Wait for the child to exit.

        Raises
        ------
        BackgroundFailure
            The task raised (the message holds its traceback), or the child exited with
            a status other than 0 or was killed by a signal.
        """
        with os.fdopen(self.errors, "rb") as pipe:  # EOF once the child has exited
            written = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return
        text = written.decode("utf-8", "replace").strip()
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        last = text.splitlines()[-1] if text else ""
        message = f"{self.what} failed in its child process ({how})" + (f": {last}" if last else "")
        raise BackgroundFailure(message, text)


def in_background(task: Callable[[], object], what: str) -> BackgroundTask:
    """Run ``task`` in a forked child process and return at once.

    The child runs ``task`` and leaves with :func:`os._exit` (status 0, or 1 after
    writing the traceback of an exception to a pipe the parent reads): it never returns
    into the parent's code, runs no ``atexit`` handler and flushes none of the parent's
    buffered output. Call :meth:`BackgroundTask.wait` (always, also when the parent
    fails meanwhile) to reap the child and learn whether the task succeeded.

    Parameters
    ----------
    task : Callable[[], object]
        What the child does (its return value is ignored).
    what : str
        What the task does, for the error message (``"writing examples.csv"``).

    Returns
    -------
    BackgroundTask
        The running child.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(read_end)
            task()
            status = 0
        except BaseException:
            try:
                os.write(write_end, traceback.format_exc().encode("utf-8", "replace"))
            except BaseException:  # the exit status still says it failed
                pass
        finally:
            # os._exit is public and documented (the exit of a forked child), despite
            # its underscore
            os._exit(status)
    os.close(write_end)
    return BackgroundTask(pid, read_end, what)
