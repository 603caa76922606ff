"""The ``customer-ai`` program's exit (:func:`stream.cli.program.console_main`).

A command that left its objects to the end of the process (``evaluate``) ends it without
Python freeing them; what it printed is flushed first, and its status is the process's.
Other commands exit as usual, ``atexit`` handlers included.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from stream.cli import program
from tests.harness import REPO

PROGRAM = textwrap.dedent(
    """
    import atexit, sys
    from stream.cli import program
    cli = sys.modules["stream.cli.main"]  # the module (the package's `main` is the function)

    def command(argv=None):
        print("buffered on stdout", end="")  # a pipe: still in the buffer at the exit
        sys.stderr.write("and on stderr")
        if {leave}:
            program.leave_to_exit([object() for _ in range(1000)])
        return 3

    atexit.register(lambda: print(" / atexit ran", end=""))
    cli.main = command
    program.console_main()
    """
)


def _run(leave: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM.format(leave=leave)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_command_that_leaves_its_objects_ends_with_its_output_flushed_and_status() -> None:
    done = _run(leave=True)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered on stdout"  # flushed; no atexit handler ran
    assert done.stderr == "and on stderr"


def test_other_commands_exit_as_usual() -> None:
    done = _run(leave=False)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered on stdout / atexit ran"


def test_in_process_nothing_is_kept() -> None:
    """A test (or any caller of a command's function) frees the objects as usual."""
    program.leave_to_exit([1, 2, 3])
    assert not program.left_to_exit()
