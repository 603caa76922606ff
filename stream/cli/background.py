"""Run one task in a forked child process while the parent goes on with other work.

``customer-ai evaluate`` writes ``examples.csv`` and computes the report's figures of
the examples this way, on the second core, while the parent builds the profile documents.
The child sees the parent's memory as it was at the fork (copy on write): nothing is sent
to it. What the task returns comes back as JSON (the report's figures: 134 kB on the
purchase log of ``bench/purchase_log.py``).

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "out.txt"
>>> task = in_background(lambda: path.write_text("written by the child"), "out.txt")
>>> task.wait()
20
>>> path.read_text()
'written by the child'
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from typing import Any

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
    pipe : int
        The read end of the pipe the child writes its result, or its error, to.
    what : str
        What the task does, for the error message.
    """

    def __init__(self, pid: int, pipe: int, what: str) -> None:
        self.pid = pid
        self.pipe = pipe
        self.what = what
        self.waited = False

    def wait(self) -> Any:
        """Wait for the child to exit; return what the task returned, through JSON
        (``json.loads(json.dumps(value))``: tuples come back as lists, keys as strings).

        Raises
        ------
        OSError
            The task failed with an operating-system error (a file that cannot be
            written, a full disk): the same error (errno, message, file names) raised
            here, so that the caller handles it as if the task had run in its process.
        BackgroundFailure
            The task raised anything else (the message holds its traceback), or the
            child exited with a status other than 0 or was killed by a signal.
        """
        if self.waited:
            raise RuntimeError(f"{self.what}: the child was waited for already")
        self.waited = True
        with os.fdopen(self.pipe, "rb") as pipe:  # EOF once the child has exited
            written = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        report = json.loads(written) if written else {}
        if code == 0:
            return report.get("result")
        if report.get("os_error"):
            errno, strerror, filename, filename2 = report["os_error"]
            # OSError(errno, ...) is the subclass of that errno (IsADirectoryError...)
            raise OSError(errno, strerror, filename, None, filename2)
        text = str(report.get("traceback", "")).strip()
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        last = text.splitlines()[-1] if text else ""
        message = f"{self.what} failed in its child process ({how})" + (f": {last}" if last else "")
        raise BackgroundFailure(message, text)

    def reap(self) -> None:
        """Wait for the child to exit unless :meth:`wait` did, ignoring how the task
        ended (when the parent failed: its own error is the one to report). A child still
        writing its result to the pipe finds it closed and exits."""
        if self.waited:
            return
        self.waited = True
        os.close(self.pipe)
        os.waitpid(self.pid, 0)


def in_background(task: Callable[[], Any], what: str) -> BackgroundTask:
    """Run ``task`` in a forked child process and return at once.

    The child runs ``task``, writes what it returned (as JSON) or else what its exception
    was and its traceback to a pipe the parent reads, and leaves with :func:`os._exit`
    (status 0, or 1 after an exception): it never returns into the parent's code, runs no
    ``atexit`` handler and flushes none of the parent's buffered output. Call
    :meth:`BackgroundTask.wait` to reap the child and learn whether the task succeeded,
    or :meth:`BackgroundTask.reap` when the parent fails before that.

    Parameters
    ----------
    task : Callable[[], Any]
        What the child does; its return value, a JSON value (None included), is what
        :meth:`BackgroundTask.wait` returns.
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
            result = json.dumps({"result": task()}).encode("utf-8")
            _write_all(write_end, result)
            status = 0
        except BaseException as exc:
            report: dict[str, object] = {"traceback": traceback.format_exc(), "os_error": None}
            if isinstance(exc, OSError) and exc.errno is not None:
                report["os_error"] = [exc.errno, exc.strerror, exc.filename, exc.filename2]
            try:
                _write_all(write_end, json.dumps(report, default=str).encode("utf-8", "replace"))
            except BaseException:  # the exit status still says it failed
                pass
        finally:
            # os._exit is public and documented (the exit of a forked child), despite
            # its underscore
            os._exit(status)
    os.close(write_end)
    return BackgroundTask(pid, read_end, what)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a pipe takes 64 KiB at a time: the writer waits
    until the parent reads)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
